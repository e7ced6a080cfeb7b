"""Throttled progress for long ``defmap`` runs: stage and percent done on ``session.logger.status``.

The status line is the status bar in the GUI and a printed line under ``--nogui``; a run that loops over rotations
or blocks would otherwise flood both, so updates are shown at most once per ``interval`` seconds (by the clock, not
by count).  The final message always shows and says what finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_INTERVAL = 0.3  # seconds between shown updates: about three a second


class Progress:
    """Stage-and-percent reporter for one command; ``span`` gives a part of the run its own 0..1 scale."""

    clock: Callable[[], float] = staticmethod(time.monotonic)  # the throttle's clock (a test can read what it read)

    def __init__(self, session, task: str = "DEFMap", interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] | None = None, quiet: bool = False):
        self.session = session
        self.task = task
        self.interval = interval
        if clock is not None:
            self.clock = clock
        self.quiet = quiet or session is None
        self.shown: list[str] = []  # messages actually sent to the status line (tests and logs read them)
        self._last = None  # clock time of the last shown update
        self._fraction = 0.0

    def update(self, fraction: float, stage: str) -> None:
        """Report that ``stage`` is under way with ``fraction`` (0..1) of the whole run done; shown if due."""
        self._fraction = max(self._fraction, min(max(float(fraction), 0.0), 1.0))  # never runs backwards
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        self._show(f"{self.task}: {stage} … {100 * self._fraction:.0f}%")

    def span(self, start: float, stop: float, prefix: str = "") -> Progress:
        """A view of this reporter for a part of the run that covers ``start``..``stop`` of the whole."""
        return _Span(self, start, stop, prefix)

    def done(self, message: str) -> None:
        """The final status line (always shown): what finished."""
        self._show(message)

    def _show(self, message: str) -> None:
        self.shown.append(message)
        if not self.quiet:
            self.session.logger.status(message)


class _Span(Progress):
    def __init__(self, parent: Progress, start: float, stop: float, prefix: str):
        self.parent, self.start, self.stop, self.prefix = parent, start, stop, prefix

    def update(self, fraction: float, stage: str) -> None:
        f = min(max(float(fraction), 0.0), 1.0)
        self.parent.update(self.start + (self.stop - self.start) * f, f"{self.prefix}{stage}")

    def span(self, start: float, stop: float, prefix: str = "") -> Progress:
        return _Span(self, start, stop, prefix)

    def done(self, message: str) -> None:  # a part finishing is not the run finishing
        self.update(1.0, message)


def silent() -> Progress:
    """A reporter that shows nothing (Python callers that did not ask for progress)."""
    return Progress(None, quiet=True)
