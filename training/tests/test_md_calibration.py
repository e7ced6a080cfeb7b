"""defmap-train md-calibrate: the weight fit gives a term weight where the term carries MD's signal and none where it
is noise, and writing a calibration changes only the calibration (metadata merged, everything else kept)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chimerax.defmap.combination import zscore
from defmap_train.md_calibration import fit_weights, set_calibration


def _maps(intensity_signal: float, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for c in range(12):
        for variant in ("hard", "hard", "clean"):
            truth = rng.normal(size=150)
            net = truth + rng.normal(0, 1.0, 150)
            out.append({"chain": f"c{c}", "variant": variant, "truth": truth, "network": zscore(net),
                        "contrast": zscore(rng.normal(size=150)),
                        "native_contrast": zscore(truth + rng.normal(0, 2, 150)),
                        "voxel_network": zscore(net), "packing": zscore(rng.normal(size=150)),
                        "intensity": zscore(intensity_signal * truth + rng.normal(0, 1.0, 150))})
    return out


CURRENT = {"structure": {"contrast_weight": 0.05, "native_contrast_weight": 0.0},
           "voxel": {"map_packing_weight": 0.0, "map_intensity_weight": 0.0}}


def test_weights_follow_the_signal():
    w = fit_weights(_maps(1.0), CURRENT)
    v = w["voxel"]["fitted"]
    assert v["map_intensity_weight"]["value"] >= 0.5 and v["map_packing_weight"]["value"] <= 0.1
    assert v["map_intensity_weight"]["residue_r"] > w["voxel"]["residue_r_current"]
    s = w["structure"]["fitted"]
    assert s["native_contrast_weight"]["value"] >= 0.2 and s["contrast_weight"]["value"] <= 0.1
    assert fit_weights(_maps(0.0), CURRENT)["voxel"]["fitted"]["map_intensity_weight"]["value"] <= 0.1


def test_a_term_the_models_do_not_compute_stays_out_and_the_others_are_fitted():
    """Models with contrast weight 0 compute no lattice contrast: the contrast at map resolution is still fitted."""
    maps = _maps(1.0)
    for m in maps:
        del m["contrast"]
    w = fit_weights(maps, {**CURRENT, "structure": {"contrast_weight": 0.0, "native_contrast_weight": 0.0}})
    s = w["structure"]
    assert s["not_computed"] == ["contrast_weight"] and list(s["fitted"]) == ["native_contrast_weight"]
    assert s["fitted"]["native_contrast_weight"]["value"] >= 0.2
    assert "structure" not in fit_weights(maps, CURRENT)  # a term the models weigh but did not record: no fit


def test_set_calibration_merges_into_the_metadata_only(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from chimerax.defmap.network import make_metadata, read_model_info
    from chimerax.defmap.preprocess import FeatureSpec
    graph = helper.make_graph([helper.make_node("Identity", ["density"], ["y"])], "g",
                              [helper.make_tensor_value_info("density", TensorProto.FLOAT, [None, 1, 10, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, 10, 10, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    meta = make_metadata("m", FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0), fully_convolutional=True)
    d = json.loads(next(iter(meta.values())))
    d["calibration"] = {"sd_scale": 0.5, "anm_weight": 1.0}
    helper.set_model_props(model, {next(iter(meta)): json.dumps(d)})
    p = tmp_path / "m.onnx"
    onnx.save(model, str(p))
    set_calibration(p, {"sd_scale": 0.1, "sd_slope": 0.15})
    cal = read_model_info(p).calibration
    assert cal == {"sd_scale": 0.1, "anm_weight": 1.0, "sd_slope": 0.15}
    assert [n.op_type for n in onnx.load(str(p)).graph.node] == ["Identity"]


def _sd_fits(c_true: float, seed: int = 1) -> list:
    """Synthetic maps whose residue errors have SD exp(c_true x disagreement) times a per-map scale."""
    from defmap_train.md_calibration import MapFit
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(30):
        n = 200
        pred = rng.normal(size=n)
        apart = np.abs(rng.normal(size=n))
        truth = 0.5 * pred + rng.normal(size=n) * np.exp(c_true * apart) * rng.uniform(0.1, 0.3)
        out.append(MapFit(pred, np.ones(n), lambda v: v, truth, pred, 1.0, apart))
    return out


def test_sd_shape_finds_the_disagreement_weight_and_the_scale_covers_68_percent():
    from defmap_train.md_calibration import fit_sd_scale, fit_sd_shape, sd_pairs
    b, p, c = fit_sd_shape(_sd_fits(0.5), disagreement=True)
    assert abs(c - 0.5) <= 0.15 and abs(b) <= 0.15
    assert fit_sd_shape(_sd_fits(0.0), disagreement=True)[2] <= 0.1
    assert fit_sd_shape(_sd_fits(0.5))[2] == 0.0  # off unless asked for
    fits = _sd_fits(0.5, seed=2)
    scale = fit_sd_scale(fits, b, p, c)
    pairs = sd_pairs(fits, b, p, c, scale)
    covered = np.mean(np.concatenate([np.abs(e) <= s for s, e in pairs]))
    assert covered == pytest.approx(0.68, abs=0.01)


def test_run_slope_follows_errors_that_widen_as_the_network_agrees_less_with_the_map():
    """fit_run_slope: maps whose residue errors have SD 0.2 x exp(k x (agree - 0.5)) give back k (within the grid
    step and noise), centred on the maps' mean agreement; maps whose errors do not depend on it give about 0."""
    from defmap_train.md_calibration import MapFit, fit_run_slope
    rng = np.random.default_rng(3)

    def fits(k: float) -> list:
        out = []
        for _ in range(40):
            n, agree = 150, float(rng.uniform(0.1, 0.9))
            pred = rng.normal(size=n)
            truth = 0.5 * pred + rng.normal(size=n) * 0.2 * np.exp(k * (agree - 0.5))
            out.append(MapFit(pred, np.ones(n), lambda v: v, truth, pred, 1.0, np.zeros(n), agree))
        return out
    got = fits(-1.5)
    slope, centre = fit_run_slope(got, 0.0, 0.0, 0.0)
    assert abs(slope + 1.5) <= 0.2 and centre == pytest.approx(np.mean([f.agree for f in got]))
    assert abs(fit_run_slope(fits(0.0), 0.0, 0.0, 0.0)[0]) <= 0.2


def test_cached_results_are_keyed_by_the_models_and_the_bundle_code(tmp_path, monkeypatch):
    """A change to a model file or to a bundle module gives a new cache key, so no fit reuses arrays another recipe
    made."""
    from types import SimpleNamespace

    from defmap_train import atlas_eval
    f = tmp_path / "defmap_5A.onnx"
    f.write_bytes(b"weights")
    models = [SimpleNamespace(path=f)]
    key = atlas_eval.models_key(models)
    assert atlas_eval.models_key(models) == key
    f.write_bytes(b"other weights")
    assert atlas_eval.models_key(models) != key
    f.write_bytes(b"weights")
    real = atlas_eval.file_sha256
    monkeypatch.setattr(atlas_eval, "file_sha256", lambda p: "edited" if str(p).endswith("recipe.py") else real(p))
    assert atlas_eval.models_key(models) != key
