"""The expected agreement with MD per run (expected.py): what it measures, the shipped fit it applies, and how the
command reports it (log line, JSON, a structure attribute that sessions keep)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chimerax.core.commands import run

from chimerax.defmap import expected

from .helpers import run_logged, shared_path, shipped


def _models():
    return shipped(expected.load, "expected_r.json")


def test_shipped_fit_is_from_atlas_train_for_both_modes_and_the_bundles_features():
    models = _models()
    assert set(models) == {"structure", "voxel"}
    meta = json.loads(expected.structure_prior.prior_file(expected.PATH).read_text())
    assert "atlas_train" in meta["fitted_on"] and "never md_reference" in meta["fitted_on"]
    for mode, m in models.items():
        assert m.features == expected.FEATURES[mode] and 0 < m.resid_sd < 1


def test_structure_features_measure_agreement():
    rng = np.random.default_rng(0)
    map_at = rng.normal(size=200)
    packing = rng.normal(size=200)
    f = expected.structure_features(-map_at, map_at, packing, 4.5)
    assert f["agree_raw"] == pytest.approx(1.0) and abs(f["agree_packing"]) < 0.2
    assert f["resolution"] == 4.5 and f["log_residues"] == pytest.approx(np.log(200))
    f = expected.structure_features(-packing + 0.1 * rng.normal(size=200), map_at, packing, 4.5)
    assert f["agree_packing"] > 0.9


def test_more_agreement_means_a_higher_expected_r_and_features_are_clamped():
    m = _models()["structure"]
    base = dict(zip(m.features, m.mean))
    low = m.predict({**base, "agree_raw": 0.1, "agree_packing": 0.1})
    high = m.predict({**base, "agree_raw": 0.8, "agree_packing": 0.8})
    assert high.r > low.r and low.low < low.r < low.high
    far = m.predict({**base, "resolution": 1e6})
    edge = m.predict({**base, "resolution": float(m.high[m.features.index("resolution")])})
    assert far.r == pytest.approx(edge.r)


def test_a_fit_on_other_features_gives_no_estimate(tmp_path):
    d = json.loads(expected.structure_prior.prior_file(expected.PATH).read_text())
    d["modes"]["structure"]["features"] = ["something", "else", "entirely", "new"]
    p = tmp_path / "expected_r.json"
    p.write_text(json.dumps(d))
    assert set(expected.load(p)) == {"voxel"}


def test_command_logs_returns_and_stores_expected_r_and_sessions_keep_it(cx, tmp_path):
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    res, text = run_logged(cx, "defmap #1 structure #2 mapResolution 3.2 color false")
    e = res.expected
    assert e is not None and -1 < e.low < e.r < e.high < 1
    assert f"DEFMap expected agreement with MD: r ≈ {e.r:.2f} ({e.low:.2f}–{e.high:.2f})" in text
    j = json.loads(run(cx, "defmap #1 structure #2 mapResolution 3.2 color false", return_json=True).json_value)
    assert j["expected_r"] == pytest.approx(e.r, abs=1e-3) and j["expected_r_range"][0] < j["expected_r"]
    s = res.structure
    assert s.defmap_expected_r == pytest.approx(e.r) and s.defmap_expected_r_low == pytest.approx(e.low)
    path = tmp_path / "s.cxs"
    run(cx, f"save {path}", log=False)
    run(cx, "close", log=False)
    run(cx, f"open {path}", log=False)
    s2 = [m for m in cx.models.list() if m.name == "5me2.pdb"][0]
    assert s2.defmap_expected_r == pytest.approx(e.r) and s2.defmap_expected_r_high == pytest.approx(e.high)


def test_voxel_mode_logs_and_returns_expected_r(cx):
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    res, text = run_logged(cx, "defmap #1 mapResolution 3.2 color false")
    e = res.expected
    assert e is not None and e.low < e.r < e.high
    assert f"r ≈ {e.r:.2f}" in text and "contour's packing" in text
    assert res.as_dict()["expected_r"] == pytest.approx(e.r, abs=1e-3)


def test_without_the_fit_the_log_says_so_and_the_attribute_is_none(cx, monkeypatch):
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    monkeypatch.setattr(expected, "load", lambda path=None: None)
    res, text = run_logged(cx, "defmap #1 structure #2 mapResolution 3.2 color false")
    assert res.expected is None and "not estimated" in text
    assert res.structure.defmap_expected_r is None and res.as_dict()["expected_r"] is None


def test_error_factor_falls_as_r_rises_and_is_held_at_the_ends():
    f = [expected.error_factor(r) for r in (0.3, 0.6, 0.9)]
    assert f[0] > f[1] > f[2] > 0
    assert expected.error_factor(0.6) == pytest.approx(0.8 / 0.6)
    assert expected.error_factor(1.0) == expected.error_factor(expected.R_CEIL)
    assert expected.error_factor(-0.5) == expected.error_factor(expected.R_FLOOR)
