"""validate-md regenerates the docs' / MODEL_CARD's block from its own result and the train run's CV JSON."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="training needs torch (make train-env)")


def _result() -> dict:
    s = {"raw": 0.6, "anm": 0.7, "raw+anm_zsum": 0.72, "prior": 0.73, "raw+prior_zsum": 0.735, "map_network": 0.74,
         "map": 0.75, "map_model_volume": 0.751, "map_initial_level": 0.76, "auto_level_volume": 0.97,
         "initial_level_volume": 0.3,
         "map+map_anm": 0.77,
         "map+model_network": 0.79, "map+model": 0.8, "map+model+anm_fitted": 0.81,
         "map+model_sd_spearman": 0.2, "chains": 17}
    return {"command": "defmap-train validate-md --models x", "models": ["onnx/defmap_5A.onnx"],
            "residue_atoms": "backbone", "maps_per_variant": 2, "summary": {"hard": s, "clean": dict(s)}}


def test_docs_block_replaces_only_the_marked_text(tmp_path):
    from defmap_train.validate_md import DOC_BEGIN, DOC_END, docs_block, update_docs
    tj = tmp_path / "train_5A.json"
    tj.write_text(json.dumps({"kinds": {"map+model": {"cv": {"proteins": 54, "residue_r": 0.66, "anm_r": 0.61,
                                                               "coverage68_calibrated": 0.68, "sd_scale": 1.1,
                                                               "anm_weight": 0.5, "contrast_weight": 0.2,
                                                               "residue_r_with_contrast": 0.67}}}}))
    doc = tmp_path / "README.md"
    doc.write_text(f"before\n{DOC_BEGIN}\nold table\n{DOC_END}\nafter\n", encoding="utf-8")
    update_docs([doc], docs_block(_result(), [tj]))
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("before\n") and text.endswith(f"{DOC_END}\nafter\n") and "old table" not in text
    # the columns, in order
    assert ("| 0.600 | 0.700 | 0.720 | 0.730 | 0.735 | 0.740 | 0.750 | 0.751 | 0.760 | 0.970 | 0.300 | 0.770 | 0.790 | "
            "0.800 | 0.810 | 0.200 |" in text)
    assert "ANM of the structure vs the same labels 0.610" in text
    assert "with the density contrast (c = 0.2, fitted on that CV) 0.670" in text
    assert "| hard: map + model ≥ ANM + 0.05 | 0.800 | 0.750 | yes |" in text
    update_docs([doc], docs_block(_result(), [tj]))  # idempotent
    assert doc.read_text(encoding="utf-8") == text
    both = json.loads(tj.read_text())
    both["kinds"]["map+model"]["cv"]["native_contrast_weight"] = 0.3
    tj.write_text(json.dumps(both))
    both["kinds"]["map"] = {"cv": {"proteins": 54, "residue_r": 0.63, "anm_r": 0.61, "coverage68_calibrated": 0.68,
                                   "sd_scale": 1.0, "anm_weight": 1.0, "map_anm_weight": 0.25,
                                   "residue_r_with_map_anm": 0.69, "map_packing_weight": 0.7,
                                   "residue_r_with_packing": 0.68}}
    tj.write_text(json.dumps(both))
    native = docs_block(_result(), [tj])
    assert ("with the map's packing (voxel mode, weight 0.7 fitted on that CV) 0.680, and with normal modes of the "
            "map's pseudo-atoms (voxel mode's normalModes, weight 0.25 fitted on that CV) 0.690") in native
    assert ("with the density contrasts (c = 0.2 on the network's lattice, n = 0.3 at the map's resolution, fitted "
            "together on that CV) 0.670") in native and "with the density contrast (c" not in native
    fewer = _result()
    fewer["summary"]["hard"]["fewer_chains"] = {"map+map_anm": 16}  # voxel normal modes failed on one chain
    marked = docs_block(fewer, [tj])
    assert "| 0.760 | 0.970 | 0.300 | 0.770 (n 16) | 0.790 |" in marked and "A mean marked (n N)" in marked
    assert "(n " not in docs_block(_result(), [tj])
    bare = tmp_path / "CARD.md"
    bare.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- validate-md:begin -->"):
        update_docs([bare], "x")


def test_sd_slope_fit_finds_errors_that_grow_with_the_prediction():
    """fit_sd_shape: errors whose SD grows with the predicted value give a positive slope, constant errors about
    zero; a head SD that tracks the errors keeps its power, a noisy one loses it; fit_sd_scale then makes ±SD cover
    68 % of the errors."""
    import numpy as np

    from defmap_train.md_calibration import MapFit, fit_sd_scale, fit_sd_shape, shaped_sd

    def per_res(v):
        return np.asarray(v, dtype=float)

    def maps(slope: float, seed: int, n: int = 4, head: str = "constant"):
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            pred = rng.normal(0, 0.2, 300)
            z = (pred - pred.mean()) / pred.std()
            h = np.exp(rng.normal(0, 0.5, 300))  # a head SD that varies
            truth = pred + rng.normal(0, 0.1, 300) * np.exp(slope * z) * (h if head == "right" else 1.0)
            out.append(MapFit(pred, 0.1 * (h if head != "constant" else 1.0), per_res, truth, pred, 1.0,
                              np.zeros(300)))
        return out

    assert fit_sd_shape(maps(0.6, 1))[0] == pytest.approx(0.6, abs=0.15)
    assert abs(fit_sd_shape(maps(0.0, 2))[0]) <= 0.15
    assert fit_sd_shape(maps(0.0, 3, head="right"))[1] >= 0.75  # a head that knows the errors keeps its power
    assert fit_sd_shape(maps(0.0, 4, head="noise"))[1] <= 0.25  # one that does not is switched off
    fits = maps(0.6, 5, 8)
    b, p, c = fit_sd_shape(fits)
    scale = fit_sd_scale(fits, b, p, c)
    inside = np.concatenate([np.abs(f.truth - f.reported) <= scale * shaped_sd(f, b, p, c) for f in fits])
    assert 0.6 < inside.mean() < 0.76


def test_paired_lines_compare_an_option_on_the_chains_where_both_ran():
    from defmap_train.validate_md import paired_lines
    chains = [{"variants": {"hard": {"map": 0.5, "map+map_anm": 0.6}}},
              {"variants": {"hard": {"map": 0.7, "map+map_anm": 0.6}}},
              {"variants": {"hard": {"map": 0.2}}}]  # normal modes failed here: not paired
    text = "\n".join(paired_lines(chains))
    assert "| voxel mode: normalModes true − default | +0.000 ± 0.100 (1 of 2 gain) | – |" in text
    assert paired_lines([{"variants": {"hard": {"map": 0.5}}}]) == []


def test_a_chain_has_a_column_only_where_every_map_of_the_kind_has_it():
    """One map where an option failed leaves the chain out of that column rather than pairing the other map alone
    with both maps of the default."""
    import math

    from defmap_train.validate_md import map_means
    rows = [{"map": 0.2, "map+map_anm": 0.6}, {"map": 0.6}]
    means = map_means(rows, ["map", "map+map_anm"])
    assert means["map"] == pytest.approx(0.4) and math.isnan(means["map+map_anm"])


def test_compare_lines_pair_two_results_by_chain():
    """validate-md-compare: B − A per chain, over the chains both results have, with each side's mean over them."""
    from defmap_train.validate_md import compare_lines
    a = {"command": "A", "chains": [{"chain": "x", "variants": {"image": {"map+model": 0.80}}},
                                    {"chain": "y", "variants": {"image": {"map+model": 0.90}}},
                                    {"chain": "z", "variants": {"image": {"map+model": 0.10}}}]}
    b = {"command": "B", "chains": [{"chain": "x", "variants": {"image": {"map+model": 0.84}}},
                                    {"chain": "y", "variants": {"image": {"map+model": 0.88}}}]}
    text = "\n".join(compare_lines(a, b))
    assert "| image (cross-family) (2) | 0.850 | 0.860 | +0.010 ± 0.030 (1 of 2 gain) |" in text
    assert "| hard" not in text  # a kind neither has is left out
