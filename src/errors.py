"""Error messages in one line: ChimeraX logs a UserError as a sentence."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (ChimeraX errors can span paragraphs)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
