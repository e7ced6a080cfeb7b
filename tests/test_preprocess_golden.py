"""Preprocessing output is frozen: training imports chimerax.defmap.preprocess, so a speed-up (or any edit) that
changes its numbers would silently change what the shipped models see.  The golden figures below were computed with
the first committed preprocess.py (3f00ee2) and still hold for points; an intended change must update them and retrain.
Voxel mode's figures changed once, when its centres became the lattice voxels enclosing the volume the level encloses
in the map (``preprocess.carried_level``); training reads only ``prepare_points``, so no network was retrained."""

from __future__ import annotations

import numpy as np
import pytest

from chimerax.defmap import preprocess as pp

GOLDEN = {
    "points": {
        "shape": [41, 46, 46],
        "origin": [-19.5, 1.5, -3.0],
        "sigma": 0.6002108774380707,
        "n_centers": 295,
        "centers_sum": [6015, 6526, 6681],
        "p2c_sum": 43775,
        "sum": 10511.720913438476,
        "sumsq": 25754.699523044917,
        "max": 6.6100287437438965,
        "nonzero": 7967,
        "patch_sum": 188103.03939591325,
        "patch_weighted": 94902180.75575736,
        "probe": [0.0, 0.0, 2.0086495876312256, 0.0, 0.0],
    },
    "voxels": {
        "shape": [52, 64, 66],
        "origin": [-33.0, -12.0, -13.5],
        "sigma": 0.7502635967975885,
        "n_centers": 1766,
        "centers_sum": [49321, 53909, 56389],
        "p2c_sum": 1558495,
        "sum": 9807.366921516723,
        "sumsq": 22099.639190949503,
        "max": 5.885678768157959,
        "nonzero": 7841,
        "patch_sum": 1349150.8715395543,
        "patch_weighted": 701805622.5386114,
        "probe": [1.9435425996780396, 2.4783949851989746, 2.150111675262451, 2.6245925426483154, 2.8730459213256836],
    },
}


def _case():
    """A skewed (rotated cell, 1.1 Å) noisy map of 60 Gaussian blobs and 300 points; point and voxel preparation."""
    rng = np.random.default_rng(42)
    pts = rng.uniform(8, 40, (300, 3))
    shape = (44, 48, 52)  # z, y, x
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    m = np.zeros(shape, np.float32)
    for p in pts[:60]:
        m += np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2 + (zz - p[2]) ** 2) / 8.0).astype(np.float32)
    m += rng.normal(0, 0.01, shape).astype(np.float32)
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    x2i, i2x = pp.grid_transforms((-3.0, 2.0, 1.0), (1.1, 1.1, 1.1), rot)
    xyz = pts @ (rot * 1.1).T + np.array([-3.0, 2.0, 1.0])
    spec = pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)
    return spec, {"points": pp.prepare_points(m, x2i, xyz, spec, map_resolution=3.0),
                  "voxels": pp.prepare_voxels(m, x2i, i2x, spec, level=0.5)}


@pytest.mark.parametrize("mode", ["points", "voxels"])
def test_preprocess_output_is_unchanged(mode):
    spec, preps = _case()
    p, gold = preps[mode], GOLDEN[mode]
    g = p.grid.values.astype(np.float64)
    assert p.grid.values.dtype == np.float32
    assert list(g.shape) == gold["shape"]
    assert p.grid.origin.tolist() == pytest.approx(gold["origin"], abs=1e-9)
    assert p.sigma_vox == pytest.approx(gold["sigma"], rel=1e-12)
    assert len(p.centers) == gold["n_centers"]
    assert p.centers.sum(axis=0).tolist() == gold["centers_sum"]
    assert int(p.point_to_center.sum()) == gold["p2c_sum"]
    assert int((g != 0).sum()) == gold["nonzero"]
    for key, val in (("sum", g.sum()), ("sumsq", (g * g).sum()), ("max", g.max())):
        assert val == pytest.approx(gold[key], rel=1e-6), key
    patches = pp.extract_patches(p.grid.values, p.centers, spec.box).astype(np.float64)
    assert patches.sum() == pytest.approx(gold["patch_sum"], rel=1e-6)
    assert (patches.reshape(len(patches), -1) * np.arange(1000)).sum() == pytest.approx(gold["patch_weighted"],
                                                                                         rel=1e-6)
    assert [float(x) for x in g[tuple(p.centers[:5].T)]] == pytest.approx(gold["probe"], abs=1e-6)
