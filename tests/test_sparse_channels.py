"""Shared-feature evaluation (src/shared_features.py) of conv chains with C input channels and K outputs.

C = 2 reads the map and the fitted model's density (preprocess.stack_channels); K = 2 gives mean log10 RMSF and
log-variance.  Each is checked against per-patch onnxruntime evaluation of the same ONNX stand-in (helpers).
"""

from __future__ import annotations

import numpy as np
import pytest

from chimerax.defmap import network, shared_features
from chimerax.defmap import preprocess as pp

from .helpers import fcn_onnx_model, simulated_1aku

TOL = 1e-4
SPEC = pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)
CK = [(1, 1), (1, 2), (2, 1), (2, 2)]


def layers_for(c: int, k: int):
    """The shipped architecture's shape (narrower, to keep the tests quick) with c inputs and k outputs."""
    return ((c, 8, 3), (8, 8, 3), (8, 16, 3), (16, 16, 4), (16, 8, 1), (8, k, 1))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    out = {}
    for c, k in CK:
        meta = {"input_channels": ["density", "model_density"][:c],
                "outputs": ["log10_rmsf_angstrom", "log_variance"][:k]}
        out[c, k] = fcn_onnx_model(d / f"m{c}{k}.onnx", SPEC, seed=10 * c + k, layers=layers_for(c, k),
                                   last_bias={1: -3.0} if k > 1 else None, metadata=meta)
    return out


def random_input(c: int, shape=(74, 70, 72), seed: int = 0):
    """A smooth random (z, y, x) map (one channel) or (c, z, y, x) stack, and centres including the grid edges."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    x = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 1.5).astype(np.float32) * 5 for _ in range(c)])
    lo, hi = SPEC.box // 2, np.array(shape) - (SPEC.box - SPEC.box // 2)  # centres whose patch fits
    centers = rng.integers(lo, hi + 1, (250, 3))
    edges = np.array([[lo, lo, lo], hi, [lo, hi[1], lo], [hi[0], lo, hi[2]], [lo, lo, hi[2]]])
    centers = np.concatenate([edges, centers])
    return (x[0] if c == 1 else x), centers


@pytest.mark.parametrize("ck", CK)
def test_shared_equals_patches_for_channels_and_outputs(models, ck):
    c, k = ck
    path = models[ck]
    layers = shared_features.conv_chain(path)
    assert layers is not None and layers[0].cin == c and layers[-1].cout == k
    values, centers = random_input(c, seed=c + k)
    grid = pp.Grid(values, np.zeros(3), SPEC.voxel_size)
    pred = network.Predictor(network.read_model_info(path), "cpu")
    ref = pred.predict_patches(grid, centers)
    ref_lv = pred.last_log_variance
    assert ref.std() > 0.01
    starts = centers - SPEC.box // 2
    # several 64³ blocks (a 74 x 70 x 72 grid), and many small blocks with small row chunks
    for net in (shared_features.SparseConvNet(layers),
                shared_features.SparseConvNet(layers, block=9, chunk_bytes=1 << 13)):
        y = net.predict(values, starts)
        assert y.shape == ((len(centers),) if k == 1 else (len(centers), k))
        y = y.reshape(len(centers), k)
        assert np.abs(y[:, 0] - ref).max() <= TOL
        if k > 1:
            assert np.abs(y[:, 1] - ref_lv).max() <= TOL
        assert net.flops > 0
    assert len(np.unique(starts // 9, axis=0)) > 100
    assert shared_features.SparseConvNet(layers).estimate_flops(values.shape, starts) == pytest.approx(
        shared_features.SparseConvNet(layers).estimate_flops(values.shape[-3:], starts))
    # through the Predictor: shared, with the variance output (or None) as the other methods give it
    got = pred.predict_centers(grid, centers)
    assert pred.method == "shared" and got.shape == (len(centers),)
    assert np.abs(got - ref).max() <= TOL
    if k > 1:
        assert np.abs(pred.last_log_variance - ref_lv).max() <= TOL
    else:
        assert pred.last_log_variance is None


@pytest.mark.parametrize("ck", CK)
def test_rotated_shared_equals_rotated_patches(models, ck):
    c, k = ck
    path = models[ck]
    values, centers = random_input(c, shape=(40, 36, 44), seed=7)
    centers = centers[:120]
    grid = pp.Grid(values, np.zeros(3), SPEC.voxel_size)
    pred = network.Predictor(network.read_model_info(path), "cpu")
    net = shared_features.SparseConvNet(shared_features.conv_chain(path), block=16)
    for rot in (5, 18):
        ref = pred.predict_patches(grid, centers, rotation=rot)
        ref_lv = pred.last_log_variance
        y = net.rotated(rot).predict(values, centers - SPEC.box // 2).reshape(len(centers), k)
        assert np.abs(y[:, 0] - ref).max() <= TOL
        got = pred.predict_centers(grid, centers, rotation=rot)
        assert pred.method == "shared" and np.abs(got - ref).max() <= TOL
        if k > 1:
            assert np.abs(y[:, 1] - ref_lv).max() <= TOL
            assert np.abs(pred.last_log_variance - ref_lv).max() <= TOL
    # rotation 0 and a rotation differ (the stand-in is not rotation invariant)
    assert np.abs(pred.predict_centers(grid, centers) - got).max() > 1e-3


def test_two_channel_two_output_model_runs_shared_on_a_structure(models):
    """The structure-mode case: map + model density on 1AKU, mean and log-variance from the shared path."""
    xyz, m, x2i, _ = simulated_1aku()
    prep = pp.prepare_points(m, x2i, xyz, SPEC)
    path = models[2, 2]
    info = network.read_model_info(path)
    grid = pp.Grid(pp.stack_channels(prep, info.channels, xyz, np.full(len(xyz), 6.0), info.spec),
                   prep.grid.origin, prep.grid.voxel_size)
    p = network.Predictor(info, device="cpu")
    dense = p.predict_dense(grid, prep.centers)
    lv_dense = p.last_log_variance.copy()
    shared = p.predict_centers(grid, prep.centers)
    assert p.method == "shared" and len(prep.centers) > 500
    assert np.abs(shared - dense).max() <= TOL
    assert np.abs(p.last_log_variance - lv_dense).max() <= TOL and lv_dense.std() > 0
    # allow_dense still chooses by FLOPs: scattered atoms stay shared, a filled lattice goes dense
    p.predict_centers(grid, prep.centers[:50], allow_dense=True)
    assert p.method == "shared"
    sh = grid.values.shape[-3:]
    filled = np.stack(np.meshgrid(*[np.arange(5, 5 + min(n - 9, 40)) for n in sh], indexing="ij"), -1).reshape(-1, 3)
    y = p.predict_centers(grid, filled, allow_dense=True)
    assert p.method == "dense" and p.last_log_variance is not None and len(y) == len(filled)


def test_wrong_channel_count_is_an_error(models):
    path = models[2, 2]
    net = shared_features.SparseConvNet(shared_features.conv_chain(path))
    x = np.zeros((30, 30, 30), np.float32)
    with pytest.raises(ValueError, match="2 channel"):
        net.predict(x, np.array([[0, 0, 0]]))
    p = network.Predictor(network.read_model_info(path), device="cpu")
    with pytest.raises(network.ModelError, match="2 input channel"):
        p.predict_centers(pp.Grid(x, np.zeros(3), 1.5), np.array([[10, 10, 10]]))
    one = shared_features.SparseConvNet(shared_features.conv_chain(models[1, 1]))
    assert one.predict(x[None], np.array([[0, 0, 0]])).shape == (1,)  # (1, z, y, x) is one channel too
