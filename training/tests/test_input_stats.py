"""input-stats: the measures it compares maps by."""

from __future__ import annotations

import numpy as np


def test_spectrum_slope_is_flatter_for_a_sharper_map():
    """input-stats' sharpness measure: a blob blurred less has a less negative Guinier-like slope."""
    from scipy import ndimage

    from defmap_train.diagnostics.input_stats import spectrum_slope
    rng = np.random.default_rng(0)
    pts = np.zeros((48, 48, 48))
    idx = rng.integers(12, 36, size=(300, 3))
    pts[tuple(idx.T)] = 1.0
    sharp, blurred = ndimage.gaussian_filter(pts, 0.8), ndimage.gaussian_filter(pts, 1.6)
    assert spectrum_slope(blurred, 1.5, 4.0) < spectrum_slope(sharp, 1.5, 4.0) < 0
