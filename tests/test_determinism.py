"""Same inputs, same answer: across repeated runs, fresh onnxruntime sessions, batch sizes and evaluation methods."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from chimerax.core.commands import run

from chimerax.defmap import network
from chimerax.defmap import predict as dm_predict
from chimerax.defmap import preprocess as pp

from .helpers import fcn_onnx_model
from .hostile import MapSpec, build_map, heavy_xyz_from_pdb, helix_pdb, write_mrc

SPEC = pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)
HELIX = helix_pdb(24)
TOL = 1e-6


@pytest.fixture(scope="module")
def fcn_model(tmp_path_factory) -> Path:
    """The shipped architecture with random weights (a plain conv chain: shared-feature and dense paths apply)."""
    return fcn_onnx_model(tmp_path_factory.mktemp("det") / "fcn.onnx", SPEC, seed=3, name="det-fcn")


@pytest.fixture(scope="module")
def sigmoid_model(tmp_path_factory) -> Path:
    """Conv then Sigmoid: not a plain conv chain, so onnxruntime runs it patch batch by patch batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.normal(0, 0.05, (1, 1, 10, 10, 10)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.array([0.1], np.float32), "B")
    nodes = [helper.make_node("Conv", ["density", "W", "B"], ["c"], kernel_shape=[10] * 3),
             helper.make_node("Sigmoid", ["c"], ["log10_rmsf"])]
    g = helper.make_graph(nodes, "sig", [helper.make_tensor_value_info("density", TensorProto.FLOAT,
                                                                       ["N", 1, "D", "H", "W"])],
                          [helper.make_tensor_value_info("log10_rmsf", TensorProto.FLOAT, None)], initializer=[w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in network.make_metadata("det-sigmoid", SPEC, fully_convolutional=True).items():
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    p = tmp_path_factory.mktemp("det") / "sigmoid.onnx"
    onnx.save(m, str(p))
    return p


@pytest.fixture
def scene(cx, tmp_path):
    """#1 a map saved to and opened from an MRC file, #2 a 24-residue helix."""
    xyz = heavy_xyz_from_pdb(HELIX)
    v = build_map(cx, MapSpec(shape_zyx=(48, 44, 52), step=(1.1, 1.1, 1.1)), xyz, seed=9)
    mrc = write_mrc(tmp_path / "m.mrc", v.full_matrix().copy(), 1.1, v.data.origin)
    run(cx, "close", log=False)
    run(cx, f"open {mrc}", log=False)
    (tmp_path / "h.pdb").write_text(HELIX)
    run(cx, f"open {tmp_path / 'h.pdb'}", log=False)
    return cx


def _structure(session, model, extra="") -> np.ndarray:
    res = run(session, f"defmap #1 structure #2 model {model} color false {extra}", log=False)
    return np.asarray(res.atom_values, dtype=np.float64)


@pytest.mark.parametrize("which", ["fcn", "sigmoid"])
def test_repeated_runs_and_fresh_sessions_agree(scene, which, fcn_model, sigmoid_model):
    model = fcn_model if which == "fcn" else sigmoid_model
    first = _structure(scene, model)
    again = _structure(scene, model)
    dm_predict.release_predictors()  # a fresh onnxruntime session
    fresh = _structure(scene, model)
    assert len(first) > 50
    assert np.array_equal(first, again)
    np.testing.assert_allclose(fresh, first, rtol=0, atol=TOL)


@pytest.mark.parametrize("which", ["fcn", "sigmoid"])
def test_batch_size_does_not_change_results(scene, which, fcn_model, sigmoid_model):
    model = fcn_model if which == "fcn" else sigmoid_model
    ref = _structure(scene, model)
    for bs in (1, 3, 17, 64, 256, 4096):
        np.testing.assert_allclose(_structure(scene, model, f"batchSize {bs}"), ref, rtol=0, atol=TOL,
                                   err_msg=f"batchSize {bs}")


def test_patches_and_dense_and_default_paths_agree(scene, fcn_model):
    """Every way of evaluating the network gives the same numbers (per patch, dense tiles, the default choice).

    Each method is exactly repeatable (above); between methods float32 sums run in different orders, so they agree to
    ~4e-6 on this 4-layer network rather than 1e-6."""
    from chimerax.defmap.predict import predict_voxels
    vol = scene.models.list(model_id=(1,))[0]
    outs = {}
    for dense in (None, True, False):
        res = predict_voxels(scene, vol, str(fcn_model), None, "cpu", None, 0.05, dense)
        outs[dense] = (res.prep.centers.copy(), np.asarray(res.values, np.float64))
    c0, v0 = outs[False]
    for dense in (None, True):
        c, v = outs[dense]
        assert np.array_equal(c, c0)
        np.testing.assert_allclose(v, v0, rtol=0, atol=2e-5, err_msg=f"dense={dense}")


def test_voxel_mode_repeats_exactly(scene, fcn_model):
    a = run(scene, f"defmap #1 model {fcn_model} level 0.05 color false", log=False)
    first = a.dynamics.full_matrix().copy()
    b = run(scene, f"defmap #1 model {fcn_model} level 0.05 color false", log=False)
    assert a.dynamics.deleted  # replaced by the repeat
    np.testing.assert_array_equal(first, b.dynamics.full_matrix())


def test_preprocessing_is_bitwise_repeatable():
    """The pure-numpy pipeline gives identical grids and centres on repeated calls and on a copy of the input."""
    xyz = heavy_xyz_from_pdb(HELIX)
    rng = np.random.default_rng(2)
    vals = rng.normal(0, 1, (40, 38, 42)).astype(np.float32)
    fwd, _ = pp.grid_transforms((-20.0, -19.0, -21.0), (1.05, 1.05, 1.05))
    a = pp.prepare_points(vals, fwd, xyz, SPEC, 4.0)
    b = pp.prepare_points(vals.copy(), fwd.copy(), xyz.copy(), SPEC, 4.0)
    assert np.array_equal(a.grid.values, b.grid.values) and np.array_equal(a.centers, b.centers)
    assert np.array_equal(a.point_to_center, b.point_to_center)


def test_map_opened_twice_gives_the_same_answer(scene, fcn_model, tmp_path):
    first = _structure(scene, fcn_model)
    run(scene, f"open {tmp_path / 'm.mrc'}", log=False)  # #3: the same file again
    res = run(scene, f"defmap #3 structure #2 model {fcn_model} color false", log=False)
    np.testing.assert_allclose(res.atom_values, first, rtol=0, atol=TOL)


def test_padding_the_map_does_not_change_results(cx, fcn_model, tmp_path):
    """The same density inside a bigger box (more empty voxels around it) gives the same per-atom values."""
    from chimerax.map import volume_from_grid_data
    from chimerax.map_data import ArrayGridData
    xyz = heavy_xyz_from_pdb(HELIX)
    v = build_map(cx, MapSpec(shape_zyx=(50, 46, 54), step=(1.2, 1.2, 1.2)), xyz, seed=4)
    pad = np.zeros((50 + 30, 46 + 20, 54 + 40), np.float32)
    pad[10:60, 5:51, 25:79] = v.full_matrix()
    o = np.array(v.data.origin) - np.array([25, 5, 10]) * 1.2
    volume_from_grid_data(ArrayGridData(pad, origin=tuple(o), step=(1.2, 1.2, 1.2)), cx, show_dialog=False)
    (tmp_path / "h.pdb").write_text(HELIX)
    run(cx, f"open {tmp_path / 'h.pdb'}", log=False)  # #3
    a = run(cx, f"defmap #1 structure #3 model {fcn_model} color false", log=False)
    b = run(cx, f"defmap #2 structure #3 model {fcn_model} color false", log=False)
    np.testing.assert_allclose(b.atom_values, a.atom_values, rtol=0, atol=TOL)
