"""One real headless ChimeraX session for the whole test run (booting one takes seconds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# the headless harness (tools/headless.py) lives outside the package: the wheel carries the product only
TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))


@pytest.fixture(scope="session")
def session():
    import headless
    s = headless.boot()
    yield s
    headless.shutdown(s)


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


# ---- ending the process with os._exit once pytest has reported everything (see pytest_unconfigure)
_EXIT = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT] = int(exitstatus)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    """A fresh-clone run once segfaulted after "462 passed": in the garbage collection pytest forces at unconfigure
    (``gc_collect_harder``), a finalizer of ChimeraX's C++ objects (Qt, graphics, atomic) crashed, and CI failed
    with every test passed.  The session was already shut down as ChimeraX's quit does it (``headless.shutdown``),
    the summary is printed and the cache written, so the process ends here with pytest's own exit status."""
    if _EXIT in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT])


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


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """A linear model trained here on simulated ensemble maps of two proteins: it reads local blur as dynamics."""
    import numpy as np

    from chimerax.defmap import preprocess as pp

    from .helpers import (
        linear_onnx_model,
        read_heavy_atoms,
        shared_path,
        simulate_map,
        smooth_rmsf_field,
        train_linear_model,
    )
    spec = pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)
    patches, labels = [], []
    for k, name in enumerate(["1aku.pdb", "4dfr.pdb"]):
        xyz = read_heavy_atoms(shared_path("structures", name), chain="A")
        for seed in range(3):
            rmsf = smooth_rmsf_field(xyz, seed=10 * k + seed)
            m, origin = simulate_map(xyz, rmsf, resolution=4.0, noise=0.05, seed=seed)
            xyz_to_ijk, _ = pp.grid_transforms(origin, (1.0, 1.0, 1.0))
            prep = pp.prepare_points(m, xyz_to_ijk, xyz, spec, map_resolution=4.0)
            lab = np.bincount(prep.point_to_center, weights=np.log10(rmsf)) / np.bincount(prep.point_to_center)
            patches.append(pp.extract_patches(prep.grid.values, prep.centers, spec.box))
            labels.append(lab)
    w, b = train_linear_model(np.concatenate(patches), np.concatenate(labels))
    return linear_onnx_model(tmp_path_factory.mktemp("trained") / "trained.onnx", w, b, spec, "trained-linear")


@pytest.fixture
def network_units(monkeypatch):
    """Values in the network's own scale (no MD-unit map), for tests that check the network path against a direct
    computation of it; test_md_units.py checks the map itself."""
    from chimerax.defmap import md_units
    monkeypatch.setattr(md_units, "load_scale", lambda path=None: None)
