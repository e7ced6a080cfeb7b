"""Maps sharper than the training maps are blurred to their sharpness before scoring (``preprocess.match_sharpness``);
the slope that decides it is a Guinier-like fall-off of the map's power."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from chimerax.defmap import preprocess as pp


def _blobs(sigma: float, n: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = np.zeros((n, n, n))
    idx = rng.integers(12, n - 12, size=(300, 3))
    pts[tuple(idx.T)] = 1.0
    return ndimage.gaussian_filter(pts, sigma)


def test_spectrum_slope_is_flatter_for_a_sharper_map():
    assert pp.spectrum_slope(_blobs(1.6), 1.5, 4.0) < pp.spectrum_slope(_blobs(0.8), 1.5, 4.0) < 0


def test_a_sharp_map_is_blurred_to_the_target_slope():
    values = _blobs(0.8).astype(np.float32)
    x2i, _ = pp.grid_transforms((0.0, 0.0, 0.0), (1.5, 1.5, 1.5))
    before = pp.spectrum_slope(values, 1.5, 4.0)
    target = before - 40.0
    out, sh = pp.match_sharpness(values, x2i, 4.0, target)
    assert sh.slope == before and sh.target == target and abs(sh.b_factor - 80.0) < 1e-9
    assert abs(pp.spectrum_slope(out, 1.5, 4.0) - target) < 6.0  # lands near the target, not beyond it
    assert values.dtype == out.dtype and out is not values


def test_a_map_no_sharper_than_the_target_or_a_model_without_one_is_left_as_it_is():
    values = _blobs(1.6).astype(np.float32)
    x2i, _ = pp.grid_transforms((0.0, 0.0, 0.0), (1.5, 1.5, 1.5))
    slope = pp.spectrum_slope(values, 1.5, 4.0)
    for target in (None, slope + 5.0):
        out, sh = pp.match_sharpness(values, x2i, 4.0, target)
        assert out is values and sh.b_factor == 0.0


def test_anisotropic_spacing_is_read_per_axis():
    x2i, _ = pp.grid_transforms((3.0, -2.0, 1.0), (1.0, 1.2, 1.5))
    np.testing.assert_allclose(pp.axis_spacing(x2i), [1.5, 1.2, 1.0])


def test_a_given_level_is_carried_to_the_blurred_map_by_the_volume_it_encloses():
    before = _blobs(0.8)
    after = ndimage.gaussian_filter(before, 1.0)
    level = float(np.quantile(before, 0.9))
    moved = pp.carried_level(before, after, level)
    assert moved != level
    assert abs(np.mean(after >= moved) - np.mean(before >= level)) < 1e-3


def test_the_command_logs_and_returns_what_it_did_about_sharpness_and_leaves_the_map_alone(cx):
    """EMD-3488 is sharpened (slope about -7): the log and JSON say whether the shipped model blurred it, by the
    B-factor its calibration asks for, and the map's own values are untouched."""
    import json

    from chimerax.core.commands import run

    from .helpers import run_logged, shared_path
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    vol = cx.models.list(model_id=(1,))[0]
    before = vol.full_matrix().copy()
    res, text = run_logged(cx, "defmap #1 structure #2 mapResolution 3.2 color false")
    sh = res.sharpness
    assert sh is not None and np.isfinite(sh.slope) and sh.slope > -20
    target = res.model.calibration.get("sharpness_slope")
    assert sh.target == target and (sh.b_factor > 0) == (target is not None and sh.slope > target)
    if sh.b_factor:
        assert abs(sh.b_factor - 2 * (sh.slope - target)) < 1e-6 and f"blurred by B = {sh.b_factor:.0f} Å²" in text
    else:
        assert "read as given" in text
    j = json.loads(run(cx, "defmap #1 structure #2 mapResolution 3.2 color false", return_json=True).json_value)
    assert j["blur_b_factor"] == round(sh.b_factor, 2) and j["sharpness_target"] == target
    np.testing.assert_array_equal(vol.full_matrix(), before)
