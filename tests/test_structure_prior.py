"""The structure prior learned from MD (structure_prior.py): its features are what they say, it scales to complexes,
it ranks MD flexibility better than plain ANM on chains it was not fitted on, and ``normalModes`` uses it."""

from __future__ import annotations

import time

import numpy as np
import pytest
from chimerax.core.commands import run

from chimerax.defmap import nma, structure_prior
from chimerax.defmap.structure_prior import FEATURES, raw_features

from .helpers import run_logged, shared_path, shipped

ATLAS = ("1ab1_A", "1ail_A", "1bgf_A", "1b8d_K", "1ah7_A")  # md_reference's ATLAS chains (300 K), never fitted on


def _chain(n=60, seed=0):
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n, 3))
    ca = np.cumsum(3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True), axis=0)
    heavy = np.concatenate([ca, ca + rng.normal(0, 1.5, ca.shape)])
    return ca, heavy


def test_features_equal_brute_force_definitions():
    ca, heavy = _chain()
    ca[30:] += 9.0  # a gap: two segments
    f = raw_features(ca, heavy)
    d = np.linalg.norm(ca[:, None] - ca[None], axis=2)
    np.fill_diagonal(d, np.inf)
    wcn = np.log(np.where(d < structure_prior.WCN_RADIUS, 1 / d ** 2, 0).sum(axis=1) + 1e-6)
    np.testing.assert_allclose(f["wcn"], wcn, rtol=1e-9)
    dh = np.linalg.norm(ca[:, None] - heavy[None], axis=2)
    np.testing.assert_allclose(f["heavy12"], np.log1p((dh <= 12.0).sum(axis=1)))
    assert list(np.expm1(f["end"][:32]).round().astype(int)) == [*range(15), *range(14, -1, -1), 0, 1]
    up = f["hse_up"]
    total = np.log1p((d < structure_prior.HSE_RADIUS).sum(axis=1))
    assert np.all(np.expm1(up) + np.expm1(f["hse_down"]) == pytest.approx(np.expm1(total)))
    np.testing.assert_allclose(f["anm"], nma.anm_log_fluctuations(ca))
    assert set(FEATURES) <= set(f) and all(np.isfinite(f[k]).all() for k in FEATURES)


def _heavy_and_ca(cx, pdb):
    s = run(cx, f"open {pdb}", log=False)[0]
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    ca = heavy.filter(heavy.names == "CA")
    return heavy.coords, ca.coords


def test_features_scale_to_a_large_complex(cx):
    heavy, ca = _heavy_and_ca(cx, shared_path("structures", "6ez8.pdb"))
    t0 = time.perf_counter()
    x = structure_prior.features(ca, heavy)
    assert x.shape == (len(ca), len(FEATURES)) and np.isfinite(x).all() and len(ca) > 2000
    assert time.perf_counter() - t0 < 120, "features of a complex must take seconds to a minute, not longer"


def test_prior_beats_plain_anm_on_md_it_was_not_fitted_on(cx):
    from chimerax.defmap.structure_prior import load_prior
    prior = shipped(load_prior, "structure_prior.onnx")
    assert list(prior.meta["features"]) == list(FEATURES) and "atlas_train" in prior.meta["fitted_on"]
    r_prior, r_anm = [], []
    for name in ATLAS:
        pdb = shared_path("md_reference", f"{name}.pdb")
        heavy, ca = _heavy_and_ca(cx, pdb)
        md = np.array([float(v) for v in pdb.with_suffix(".rmsf_nm.txt").read_text().replace("\n", ",").split(",")
                       if v.strip()])
        assert len(ca) == len(md)
        truth = np.log10(md)
        r_prior.append(np.corrcoef(prior.values(ca, heavy), truth)[0, 1])
        r_anm.append(np.corrcoef(nma.anm_log_fluctuations(ca), truth)[0, 1])
    assert np.mean(r_prior) > np.mean(r_anm) + 0.02, (r_prior, r_anm)


def test_without_the_prior_file_normal_modes_are_plain_anm(monkeypatch, tmp_path):
    ca, heavy = _chain()
    monkeypatch.setattr(structure_prior, "PRIOR_PATH", tmp_path / "none" / "x" / "y" / "structure_prior.onnx")
    v, source = structure_prior.prior_values(ca, heavy)
    assert source == "ANM" and np.array_equal(v, nma.anm_log_fluctuations(ca))
    monkeypatch.undo()
    v2, source2 = structure_prior.prior_values(ca, heavy)
    assert source2 == "learned prior" and not np.allclose(v2, v)


def test_normal_modes_log_names_the_learned_prior(cx):
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    res, text = run_logged(cx, "defmap #1 structure #2 mapResolution 3.2 normalModes true color false")
    assert res.prior == "learned prior"
    assert "structure prior learned from ATLAS MD" in text
    assert f"z(map) + {float(res.model.calibration['anm_weight']):g} z(prior)" in text
