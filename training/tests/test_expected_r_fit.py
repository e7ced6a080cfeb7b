"""defmap-train expected-r: the per-mode fit recovers a known dependence of r on a run feature, and its CV residual
SD is the noise it was given (so the 68 % range covers about 68 %)."""

from __future__ import annotations

import numpy as np
import pytest

from chimerax.defmap import expected
from defmap_train.expected_r_fit import design, fisher, fit_mode


def _runs(noise: float, n_chains: int = 40, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    runs = []
    for c in range(n_chains):
        for m in range(3):
            f = {k: float(rng.normal()) for k in expected.FEATURES["structure"]}
            z = 1.0 + 0.4 * f["agree_raw"] + rng.normal(0, noise)
            runs.append({"chain": f"c{c}", "map": m, "mode": "structure", "features": f, "r": float(np.tanh(z))})
    return runs


def test_fit_recovers_the_dependence_and_the_noise():
    x, y, chain = design(_runs(0.1), "structure")
    model, rep = fit_mode(x, y, chain, "structure")
    assert rep["cv_spearman"] > 0.9 and rep["coef"]["agree_raw"] > 0.3
    assert model["resid_sd"] == pytest.approx(0.1, rel=0.25)
    assert 0.55 < rep["cv_within_range"] < 0.8
    m = expected.model_from_dict(model)
    f = {k: 0.5 if k == "agree_raw" else 0.0 for k in expected.FEATURES["structure"]}
    assert np.arctanh(m.predict(f).r) == pytest.approx(1.2, abs=0.1)


def test_fisher_z_is_clipped():
    assert np.isfinite(fisher(np.array([1.0, -1.0]))).all()
