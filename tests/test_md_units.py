"""Values in MD units (md_units.py): the map keeps every ranking, puts the structure at the level its packing
predicts, carries the SD along, and the command reports it; without the calibration the values stay as before."""

from __future__ import annotations

import numpy as np
import pytest
from chimerax.core.commands import run

from chimerax.defmap import md_units

from .helpers import run_logged, shared_path, shipped

ATLAS = ("1ab1_A", "1ail_A", "1bgf_A", "1b8d_K", "1ah7_A")  # md_reference's ATLAS chains (300 K), never fitted on


def _scale():
    return shipped(md_units.load_scale, "md_units.json")


def test_shipped_calibration_is_fitted_on_atlas_train_for_both_kinds():
    scale = _scale()
    assert "atlas_train" in scale.meta["fitted_on"] and "md_reference" not in scale.meta["fitted_on"].split("never")[0]
    assert set(scale.spread) == {"map+model", "map"} and all(0.02 < v < 0.5 for v in scale.spread.values())


def test_md_units_keep_the_ranking_and_sit_at_the_predicted_level():
    rng = np.random.default_rng(3)
    steps = rng.normal(size=(80, 3))
    ca = np.cumsum(3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True), axis=0)
    heavy = np.concatenate([ca, ca + rng.normal(0, 1.5, ca.shape)])
    values = rng.normal(0.3, 0.2, 80)
    aff = md_units.affine(_scale(), "map+model", values, ca, heavy)
    out = aff.values(values)
    assert np.corrcoef(out, values)[0, 1] == pytest.approx(1.0)
    assert out.mean() == pytest.approx(aff.level) and out.std() == pytest.approx(aff.spread)
    assert aff.level == pytest.approx(_scale().level(md_units.level_features(ca, heavy))[0])
    assert np.allclose(aff.sd(np.full(3, values.std())), aff.spread * aff.sd_factor)


def test_level_is_clamped_and_flagged_outside_the_calibration_range():
    scale = _scale()
    far = scale.high + 10 * scale.scale
    level, clamped = scale.level(far)
    assert clamped and level == pytest.approx(scale.level(scale.high)[0])


def test_level_follows_md_on_chains_it_was_not_fitted_on(cx):
    """On md_reference's ATLAS chains the level is within a factor 1.6 of MD's mean RMSF (|log10 error| < 0.2)."""
    from .test_structure_prior import _heavy_and_ca
    errors = []
    for name in ATLAS:
        pdb = shared_path("md_reference", f"{name}.pdb")
        heavy, ca = _heavy_and_ca(cx, pdb)
        md = np.array([float(v) for v in pdb.with_suffix(".rmsf_nm.txt").read_text().replace("\n", ",").split(",")
                       if v.strip()]) * 10.0
        errors.append(abs(_scale().level(md_units.level_features(ca, heavy))[0] - np.log10(md).mean()))
    assert np.mean(errors) < 0.2, errors


def test_command_reports_md_units_and_without_the_file_network_units(cx, monkeypatch):
    run(cx, "close", log=False)
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    res, text = run_logged(cx, "defmap #1 structure #2 mapResolution 3.2 uncertainty true color false")
    aff = res.md_units
    assert aff is not None and "CHARMM36m, 300 K" in text
    assert np.mean(res.residue_values) == pytest.approx(aff.level, abs=1e-9)
    z = np.array([r.defmap_z for r in res.residues])
    monkeypatch.setattr(md_units, "load_scale", lambda path=None: None)
    plain, text2 = run_logged(cx, "defmap #1 structure #2 mapResolution 3.2 uncertainty true color false")
    assert plain.md_units is None and "not calibrated to MD" in text2
    assert np.allclose(aff.values(plain.residue_values), res.residue_values)
    assert np.allclose(aff.sd(plain.residue_sd), res.residue_sd)
    assert np.allclose(z, [r.defmap_z for r in plain.residues])  # the ranking is the same number

