"""The shared-feature side file (``NAME.stages.npz``): written by training's export with the onnx package, read by
the bundle with numpy (shared_features), so the bundle neither parses nor writes ONNX itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chimerax.defmap import network, shared_features
from chimerax.defmap import preprocess as pp

from .helpers import fcn_onnx_model, write_stages

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "onnx_models").glob("*.onnx"))
SPEC = pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)
LAYERS = ((2, 8, 3), (8, 8, 3), (8, 16, 3), (16, 16, 4), (16, 8, 1), (8, 2, 1))  # two channels, two outputs
META = {"input_channels": ["density", "model_density"], "outputs": ["log10_rmsf_angstrom", "log_variance"]}


def onnx_layers(path: Path):
    """(weight, bias) of each Conv of an ONNX model, straight from its initializers."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return [(inits[n.input[1]], inits[n.input[2]]) for n in m.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_models_carry_their_side_file(path):
    chain = shared_features.conv_chain(path)
    assert chain is not None, f"onnx_models/{path.name}: run defmap-train stages on it"
    ref = onnx_layers(path)
    assert len(chain) == len(ref) and len(chain.graphs) == len(shared_features.split_stages(list(chain)))
    for ly, (w, b) in zip(chain, ref):
        assert np.array_equal(ly.weight, w) and np.array_equal(ly.bias, b)
    assert [ly.activation for ly in chain] == ["LeakyRelu"] * (len(chain) - 1) + [None]


@pytest.mark.parametrize("rotation", [0, 5])
def test_stage_graphs_equal_graphs_with_the_weights_inside(rotation):
    """The stages' weights are external initializers that each session is handed: rows bit-identical to the same
    graph with the weights stored in it, at any rotation (as graph inputs they would differ by ~1e-6)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    path = next(p for p in SHIPPED if p.stem == "defmap_mapmodel_5A")
    net = shared_features.SparseConvNet(shared_features.conv_chain(path), threads=2).rotated(rotation)
    rng = np.random.default_rng(rotation)
    for stage, graph, sess in zip(net.stages, net.graphs, net._sessions):
        m = onnx.load_from_string(graph)
        weights = shared_features.stage_weights(stage)
        del m.graph.initializer[:]
        m.graph.initializer.extend(numpy_helper.from_array(a, name) for name, a in weights.items())
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        inside = ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
        for n in (1, 7, 1000):
            x = rng.normal(size=(n, weights["W0"].shape[0])).astype(np.float32)
            assert np.array_equal(sess.session.run(None, {"x": x})[0], inside.run(None, {"x": x})[0])


def random_case(c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(size=(c, 30, 28, 26))).astype(np.float32)
    return pp.Grid(x[0] if c == 1 else x, np.zeros(3), SPEC.voxel_size), rng.integers(5, 20, (60, 3))


def test_a_model_without_its_side_file_still_runs(tmp_path):
    """Without the side file (or with one written for other bytes) the model runs per patch, or in dense tiles
    unrotated, as a model outside the conv-chain pattern does; the side file written again restores shared."""
    import onnx
    path = fcn_onnx_model(tmp_path / "m.onnx", SPEC, seed=4, layers=LAYERS, last_bias={1: -3.0}, metadata=META)
    grid, centers = random_case(2)
    pred = network.Predictor(network.read_model_info(path), "cpu")
    shared = {k: pred.predict_centers(grid, centers, rotation=k) for k in (0, 3)}
    assert pred.method == "shared"
    side = shared_features.stages_path(path)
    side.unlink()
    pred = network.Predictor(network.read_model_info(path), "cpu")
    assert pred.conv_layers() is None
    for k, method in ((0, "dense"), (3, "patches")):
        assert np.abs(pred.predict_centers(grid, centers, rotation=k) - shared[k]).max() <= 1e-5
        assert pred.method == method and pred.last_log_variance is not None
    # a side file that belongs to other bytes (the model re-saved with other metadata) is not used
    assert write_stages(path) == side and shared_features.conv_chain(path) is not None
    m = onnx.load(str(path))
    m.doc_string = "changed"
    onnx.save(m, str(path))
    assert shared_features.conv_chain(path) is None
    write_stages(path)
    assert shared_features.conv_chain(path) is not None


def test_unreadable_side_files_are_ignored(tmp_path):
    path = fcn_onnx_model(tmp_path / "m.onnx", SPEC, seed=2)
    side = shared_features.stages_path(path)
    good = side.read_bytes()
    with np.load(side) as z:
        arrays = {k: z[k] for k in z.files}
    for bad in (b"", b"not a zip", good[: len(good) // 2]):
        side.write_bytes(bad)
        assert shared_features.conv_chain(path) is None
    np.savez(side, **{k: v for k, v in arrays.items() if k != "graph1"})  # a stage graph missing
    assert shared_features.conv_chain(path) is None
    np.savez(side, **arrays)
    assert shared_features.conv_chain(path) is not None


def test_export_writes_side_files_without_torch():
    """The bundle's tests write side files in a process that holds a ChimeraX session, where torch is unsafe."""
    code = "import sys, defmap_train.export; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_bundle_imports_no_onnx_or_protobuf():
    """ChimeraX ships neither; metadata and the stage graphs come through onnxruntime and the side file."""
    for p in sorted((ROOT / "src").glob("*.py")):
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else (
                [n.module] if isinstance(n, ast.ImportFrom) and n.module and n.level == 0 else [])
            bad = [x for x in names if x.split(".")[0] in ("onnx", "google")]
            assert not bad, f"src/{p.name} imports {bad}"
