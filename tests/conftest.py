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
