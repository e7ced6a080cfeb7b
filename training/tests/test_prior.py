"""``defmap-train prior``: protein-disjoint folds, the closed-form ridge fit, and an ONNX export the bundle runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch (make train-env)")
ATLAS_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "atlas_train"


def test_folds_keep_chains_that_share_a_structure_together():
    from defmap_train.atlas_train import SAME_STRUCTURE, folds
    names = [f"c{i}" for i in range(20)] + [n for pair in SAME_STRUCTURE for n in pair]
    f = folds(names, 5)
    assert all(f[a] == f[b] for a, b in SAME_STRUCTURE) and set(f.values()) == set(range(5))


def test_ridge_fit_recovers_a_linear_rule():
    from defmap_train.prior import fit
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(200, 5)) for _ in range(3)]
    w = np.array([0.5, -1.0, 0.0, 2.0, 0.1])
    ys = [x @ w + 0.01 * rng.normal(size=200) for x in xs]
    lin = fit(xs, ys, alpha=1e-6)
    np.testing.assert_allclose(lin.weight.detach().numpy().reshape(-1), w, atol=0.01)


@pytest.mark.skipif(not ATLAS_TRAIN.is_dir(), reason="../shared/data/atlas_train is not here")
def test_prior_command_exports_a_model_the_bundle_runs(tmp_path):
    from chimerax.defmap import structure_prior as sp
    from defmap_train.atlas_train import load_chain
    from defmap_train.prior import chain_data, run
    out = tmp_path / "prior.onnx"
    rep = run(argparse.Namespace(atlas_train=str(ATLAS_TRAIN), folds=2, seed=0, limit=8, out=str(out),
                                 report=str(tmp_path / "report")))
    assert len(rep["chains"]) == 8 and np.isfinite(rep["cv"]["prior_r"]) and (tmp_path / "report.json").is_file()
    prior = sp.load_prior(out)
    assert prior.meta["features"] == list(sp.FEATURES) and prior.meta["fitted_on"] == "atlas_train, 8 chains"
    name = sorted(rep["chains"])[0]
    st, _ = load_chain(name, ATLAS_TRAIN)
    ca = st.ca_index()
    got = prior.values(st.xyz[ca], st.xyz)
    x, _, _ = chain_data(name, ATLAS_TRAIN)
    w = np.array([prior.meta["weights"][k] for k in sp.FEATURES])
    assert np.corrcoef(got, x @ w)[0, 1] > 0.999  # the exported graph is the fitted linear rule
