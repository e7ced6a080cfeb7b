"""Long defmap runs report stage and percent on the status line, throttled by time, then what finished."""

from __future__ import annotations

import re
import time

import pytest
from chimerax.core.commands import run

from .helpers import fcn_onnx_model, shared_path

PERCENT = re.compile(r"… (\d+)%$")


@pytest.fixture
def statuses(cx, monkeypatch):
    """Every status message the session's logger is asked to show, with the throttle's last clock reading: for a
    percent update, the time the throttle decided to show it.  (A second clock read here, a few calls later, would
    put any pause in between on the gaps: the comparison would then be with the scheduler, not the throttle.)"""
    from chimerax.defmap.progress import Progress
    last = [float("nan")]

    def clock():
        last[0] = time.monotonic()
        return last[0]
    monkeypatch.setattr(Progress, "clock", staticmethod(clock))
    seen: list[tuple[float, str]] = []
    original = cx.logger.status

    def record(msg, *args, **kw):
        seen.append((last[0], msg))
        return original(msg, *args, **kw)
    monkeypatch.setattr(cx.logger, "status", record)
    return seen


def progress_and_final(seen, task_prefix: str):
    msgs = [(t, m) for t, m in seen if m.startswith(task_prefix)]
    steps = [(t, m, int(PERCENT.search(m).group(1))) for t, m in msgs if PERCENT.search(m)]
    finals = [m for _, m in msgs if "finished" in m]
    return msgs, steps, finals


def test_throttle_shows_at_most_one_update_per_interval_and_always_the_final_message():
    from chimerax.defmap.progress import Progress
    now = [0.0]
    p = Progress(None, "T", interval=0.3, clock=lambda: now[0])
    for t, f in [(0.0, 0.0), (0.1, 0.2), (0.2, 0.3), (0.35, 0.4), (0.5, 0.1), (0.7, 0.9)]:
        now[0] = t
        p.update(f, "work")
    p.done("T finished")
    # 0.0 shown; 0.1, 0.2 too soon; 0.35 shown; 0.5 too soon; 0.7 shown; percent never runs backwards
    assert p.shown == ["T: work … 0%", "T: work … 40%", "T: work … 90%", "T finished"]
    half = p.span(0.5, 1.0, "part: ")
    now[0] = 2.0
    half.update(0.5, "x")
    assert p.shown[-1] == "T: part: x … 90%"  # 0.75 of the whole is below the 0.9 already reported


def test_uncertainty_run_reports_throttled_progress_then_what_finished(cx, statuses, tmp_path):
    """24 rotations of 5ME2 in EMD-3488 (a model without a variance output) take seconds: several percent updates,
    spaced in time, then the summary."""
    from chimerax.defmap.preprocess import FeatureSpec
    model = fcn_onnx_model(tmp_path / "fcn5.onnx", FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0), seed=3)
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    s = run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)[0]
    t0 = time.monotonic()
    run(cx, f"defmap #1 structure #{s.id_string} model {model} uncertainty true")
    seconds = time.monotonic() - t0
    msgs, steps, finals = progress_and_final(statuses, "DEFMap")
    assert len(steps) >= 3, (seconds, msgs)
    assert any("rotation" in m for _, m, _ in steps)
    pct = [p for _, _, p in steps]
    assert pct == sorted(pct) and pct[-1] > pct[0]
    from chimerax.defmap.progress import DEFAULT_INTERVAL
    times = [t for t, _, _ in steps]
    assert min(b - a for a, b in zip(times[:-1], times[1:])) >= DEFAULT_INTERVAL  # throttled by time
    assert len(steps) <= seconds / DEFAULT_INTERVAL + 1
    assert msgs[-1][1] == finals[-1] and "570 residues" in finals[-1]  # the last message says what finished
    print(f"{seconds:.1f} s, {len(steps)} progress messages: " + " | ".join(m for _, m, _ in steps))


def test_uncertainty_with_the_shipped_variance_models_is_one_pass(cx, statuses):
    """The shipped models output a log-variance: uncertainty true is one inference pass, with no rotations."""
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    s = run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)[0]
    res = run(cx, f"defmap #1 structure #{s.id_string} uncertainty true color false")
    assert res.model.has_variance and res.atom_sd is not None and (res.atom_sd > 0).all()
    msgs, steps, finals = progress_and_final(statuses, "DEFMap")
    assert not any("rotation" in m for _, m, _ in steps), msgs
    assert "570 residues" in finals[-1]


def test_voxel_mode_compare_and_fragments_end_with_a_finished_status(cx, statuses, tmp_path):
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, "defmap #1")
    msgs, steps, finals = progress_and_final(statuses, "DEFMap voxel mode")
    assert steps and steps[0][2] == 0 and finals and msgs[-1][1] == finals[-1]
    run(cx, "close", log=False)
    statuses.clear()
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    run(cx, "defmap compare #1,2 structure #3 color false")
    msgs, steps, finals = progress_and_final(statuses, "DEFMap compare")
    assert steps and "first map" in steps[0][1] and finals and msgs[-1][1] == finals[-1]
    frags = tmp_path / "frags.csv"
    frags.write_text("chain,start,end\nA,1,20\nA,21,40\nB,1,30\n")
    statuses.clear()
    run(cx, "defmap #1 structure #3 color false")
    run(cx, f"defmap fragments {frags} structure #3")
    msgs, steps, finals = progress_and_final(statuses, "DEFMap fragments")
    assert finals and "3 fragments" in finals[-1] and msgs[-1][1] == finals[-1]
