"""Dense, shared-feature and per-patch evaluation give the same predictions (|Δ| ≤ 1e-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from chimerax.core.commands import run

from chimerax.defmap import network, shared_features
from chimerax.defmap import preprocess as pp

from .helpers import FCN_LAYERS, fcn_flops_per_patch, fcn_onnx_model, shared_path, simulated_1aku, write_stages

TOL = 1e-5
SPEC = pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)


SHIPPED = Path(__file__).resolve().parents[1] / "onnx_models" / "defmap_5A.onnx"


@pytest.fixture(scope="module", params=["stand-in", "shipped"])
def fcn_model(request, tmp_path_factory):
    """The shipped architecture with fixed random weights, and the shipped 5 Å model when it is there."""
    if request.param == "shipped":
        if not SHIPPED.is_file():
            pytest.skip("onnx_models/defmap_5A.onnx is not there")
        return SHIPPED
    return fcn_onnx_model(tmp_path_factory.mktemp("fcn") / "fcn5.onnx", SPEC, seed=3)


@pytest.fixture(scope="module")
def prepared():
    xyz, m, xyz_to_ijk, ijk_to_xyz = simulated_1aku()
    atoms = pp.prepare_points(m, xyz_to_ijk, xyz, SPEC)
    voxels = pp.prepare_voxels(m, xyz_to_ijk, ijk_to_xyz, SPEC, level=float(np.quantile(m, 0.9)))
    return atoms, voxels


def test_stand_in_model_has_the_shipped_shape(tmp_path):
    fcn_model = fcn_onnx_model(tmp_path / "fcn5.onnx", SPEC, seed=3)
    import onnxruntime as ort
    s = ort.InferenceSession(str(fcn_model), providers=["CPUExecutionProvider"])
    y = s.run(None, {"density": np.zeros((2, 1, 13, 12, 10), np.float32)})[0]
    assert y.shape == (2, 1, 4, 3, 1)
    layers = shared_features.conv_chain(fcn_model)
    assert [(ly.cin, ly.cout, ly.k) for ly in layers] == list(FCN_LAYERS)
    info = network.read_model_info(fcn_model)
    assert info.fully_convolutional and info.flops_per_patch == pytest.approx(fcn_flops_per_patch())
    assert shared_features.chain_flops(layers, (10, 10, 10)) == pytest.approx(fcn_flops_per_patch())


@pytest.mark.parametrize("which", ["atoms", "voxels"])
def test_dense_and_shared_equal_per_patch(fcn_model, prepared, which):
    prep = prepared[0] if which == "atoms" else prepared[1]
    pred = network.Predictor(network.read_model_info(fcn_model), "cpu")
    per_patch = pred.predict_patches(prep.grid, prep.centers)
    dense = pred.predict_dense(prep.grid, prep.centers)
    shared = pred.predict_centers(prep.grid, prep.centers)
    assert pred.method == "shared"
    assert len(prep.centers) > 500 and per_patch.std() > 0.01
    assert np.abs(dense - per_patch).max() <= TOL
    assert np.abs(shared - per_patch).max() <= TOL


def test_shared_rotations_equal_rotated_patches(fcn_model, prepared):
    prep = prepared[0]
    c = prep.centers[:300]
    pred = network.Predictor(network.read_model_info(fcn_model), "cpu")
    for k in (1, 7, 18, 23):
        assert np.abs(pred.predict_centers(prep.grid, c, rotation=k) - pred.predict_patches(prep.grid, c, rotation=k)
                      ).max() <= TOL


def test_shared_blocks_and_chunks_do_not_change_results(fcn_model, prepared):
    prep = prepared[1]
    layers = shared_features.conv_chain(fcn_model)
    starts = prep.centers - SPEC.box // 2
    ref = shared_features.SparseConvNet(layers, block=64).predict(prep.grid.values, starts)
    small = shared_features.SparseConvNet(layers, block=7, chunk_bytes=1 << 14)
    assert np.abs(small.predict(prep.grid.values, starts) - ref).max() <= TOL
    assert small.flops > 0


def test_non_chain_models_fall_back_to_onnxruntime(tmp_path):
    """Graphs outside the conv-chain pattern (here one Conv + Sigmoid) get no side file from the export, and are
    left to onnxruntime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((1, 1, 10, 10, 10), np.float32) * 1e-3, "W")
    g = helper.make_graph([helper.make_node("Conv", ["density", "W"], ["c"]),
                           helper.make_node("Sigmoid", ["c"], ["y"])], "g",
                          [helper.make_tensor_value_info("density", TensorProto.FLOAT, ["N", 1, "D", "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "d", "h", "w"])],
                          initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in network.make_metadata("sig", SPEC, fully_convolutional=True).items():
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.save(m, str(tmp_path / "sig.onnx"))
    assert write_stages(tmp_path / "sig.onnx") is None
    assert not shared_features.stages_path(tmp_path / "sig.onnx").exists()
    assert shared_features.conv_chain(tmp_path / "sig.onnx") is None
    pred = network.Predictor(network.read_model_info(tmp_path / "sig.onnx"), "cpu")
    grid = pp.Grid(np.random.default_rng(0).random((20, 20, 20), dtype=np.float32), np.zeros(3), 1.5)
    c = np.array([[8, 9, 10], [10, 10, 10]])
    assert np.allclose(pred.predict_centers(grid, c), pred.predict_patches(grid, c))
    assert pred.method == "patches"


def test_voxel_mode_dense_equals_per_patch_in_chimerax(cx, fcn_model):
    """`defmap MAP dense true`, `dense false` (per patch) and the default (fastest exact method) agree within 1e-5."""
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    vol = cx.models.list(model_id=(1,))[0]
    out = {}
    for opt in ("dense true", "dense false", ""):
        res = run(cx, f"defmap #1 model {fcn_model} {opt}")
        out[opt] = res.dynamics.full_matrix().copy()
        run(cx, f"close #{res.dynamics.id_string}", log=False)
    assert res.voxels > 1000
    assert np.abs(out["dense true"] - out["dense false"]).max() <= TOL
    assert np.abs(out[""] - out["dense false"]).max() <= TOL
    assert vol.deleted is False


def test_shared_memory_stays_flat_with_map_size(tmp_path):
    """Working memory of shared evaluation is bounded by its block, not the map: 8x the voxels (and centres at the
    same density), about the same peak beyond the input grid and the output vector."""
    import tracemalloc
    layers = shared_features.conv_chain(fcn_onnx_model(tmp_path / "m.onnx", SPEC, seed=1))
    rng = np.random.default_rng(0)
    peaks = []
    for n in (96, 192):
        grid = rng.random((n, n, n), dtype=np.float32)
        starts = rng.integers(0, n - 10, (n ** 3 // 2000, 3))
        net = shared_features.SparseConvNet(layers)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        out = net.predict(grid, starts)
        peak = tracemalloc.get_traced_memory()[1] - base - out.nbytes
        tracemalloc.stop()
        peaks.append(peak)
    assert peaks[1] < 1.5 * peaks[0] + (8 << 20), [p / 2**20 for p in peaks]
    assert peaks[1] < 150 << 20


def test_every_method_reports_progress_up_to_all_centres(fcn_model, prepared):
    """Status-line progress inside one inference call: per batch, tile or block, rising to 1."""
    prep = prepared[1]
    pred = network.Predictor(network.read_model_info(fcn_model), "cpu")
    sparse_net = shared_features.SparseConvNet(shared_features.conv_chain(fcn_model), block=16)
    runs = {"patches": lambda p: pred.predict_patches(prep.grid, prep.centers, batch_size=256, progress=p),
            "dense": lambda p: pred.predict_dense(prep.grid, prep.centers, tile=16, progress=p),
            "shared": lambda p: sparse_net.predict(prep.grid.values, prep.centers - SPEC.box // 2, p)}
    for method, call in runs.items():
        seen: list[float] = []
        call(seen.append)
        assert len(seen) >= 3, (method, seen)
        assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and seen[0] < 1.0, (method, seen)
