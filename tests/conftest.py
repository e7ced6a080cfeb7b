"""One real headless ChimeraX session for the whole test run (booting one takes seconds)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


@pytest.fixture(scope="session")
def session():
    from chimerax.defmap import headless
    return headless.boot()


@pytest.fixture
def cx(session):
    """The session with no models, before and after the test."""
    from chimerax.core.commands import run
    run(session, "close", log=False)
    yield session
    run(session, "close", log=False)


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """A fully convolutional linear model with fixed random weights (coverage and plumbing tests)."""
    import numpy as np

    from chimerax.defmap.preprocess import FeatureSpec

    from .helpers import linear_onnx_model
    spec = FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)
    w = np.random.default_rng(1).normal(0, 0.01, spec.box ** 3)
    return linear_onnx_model(tmp_path_factory.mktemp("models") / "random5.onnx", w, -0.1, spec, "random-5A")


# ---- robustness suite: counts of hostile inputs tried (tests/test_fuzz.py), printed at the end of every run
_FUZZ = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def fuzz_stats(request):
    from collections import Counter
    stats = request.config.stash.setdefault(_FUZZ, Counter())
    stats.setdefault("failed_ids", [])
    return stats


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    stats = config.stash.get(_FUZZ, None)
    if stats and stats["tried"]:
        terminalreporter.write_line(
            f"fuzz: {stats['tried']} inputs tried, {stats['usererror']} UserErrors, {stats['result']} results, "
            f"{stats['failure']} failures ({stats['warned']} results with counted warnings)")
        if stats["failed_ids"]:
            terminalreporter.write_line("fuzz failures: " + ", ".join(stats["failed_ids"]))
