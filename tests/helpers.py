"""Test helpers: simulated maps and small ONNX models trained inside the tests (numpy + onnx.helper, no torch).

The models get their shared-feature side file from training's export (defmap_train.export.write_stages), the code
that writes it for every exported model, so the tests run the bundle's shared-feature path as users' models do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED.exists():
    SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    import pytest
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs ../shared/data/{'/'.join(parts)} (shared data is absent on this machine)")
    return p


def shipped(load, name: str):
    """What ``load()`` reads from the bundle's shipped file ``onnx_models/prior/NAME``: a missing file fails the test
    (it is part of the bundle), it does not skip it."""
    got = load()
    assert got is not None, f"onnx_models/prior/{name} is shipped with the bundle"
    return got


def run_logged(session, command: str):
    """(what ``command`` returns, what it wrote to the log as plain text, whitespace collapsed)."""
    from chimerax.core.commands import run
    from chimerax.core.logger import StringPlainTextLog
    with StringPlainTextLog(session.logger) as log:
        result = run(session, command)
    return result, " ".join(log.getvalue().split())


def read_heavy_atoms(path: Path, chain: str | None = None) -> np.ndarray:
    """Heavy-atom coordinates from a PDB file (first model), without ChimeraX."""
    xyz = []
    for line in open(path):
        if line.startswith("ENDMDL"):
            break
        if line.startswith(("ATOM", "HETATM")) and line[76:78].strip() != "H" and line[16] in " A":
            if line[17:20] == "HOH" or (chain and line[21] != chain):
                continue
            xyz.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
    return np.array(xyz)


def simulate_map(xyz: np.ndarray, rmsf: np.ndarray, resolution: float = 4.0, voxel: float = 1.0, pad: float = 12.0,
                 n_levels: int = 8, noise: float = 0.0, seed: int = 0):
    """Ensemble-average map: each atom a Gaussian with sigma^2 = sigma_res^2 + RMSF^2/3 (Debye-Waller).

    Returns (values_zyx float32, origin_xyz).
    """
    origin = np.floor(xyz.min(axis=0) - pad)
    shape_xyz = np.ceil((xyz.max(axis=0) + pad - origin) / voxel).astype(int) + 1
    sig_res = resolution / (np.pi * np.sqrt(2.0))
    sig = np.sqrt(sig_res ** 2 + rmsf ** 2 / 3.0)
    edges = np.quantile(sig, np.linspace(0, 1, n_levels + 1))
    out = np.zeros(shape_xyz[::-1], dtype=np.float32)
    ijk = (xyz - origin) / voxel
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (sig >= lo) & (sig <= hi)
        if not sel.any():
            continue
        s = float(sig[sel].mean()) / voxel
        splat = np.zeros_like(out)
        idx = np.rint(ijk[sel]).astype(int)
        np.add.at(splat, (idx[:, 2], idx[:, 1], idx[:, 0]), 1.0)
        out += ndimage.gaussian_filter(splat, s) * (sig_res / (s * voxel)) ** 3
    if noise:
        rng = np.random.default_rng(seed)
        out += ndimage.gaussian_filter(rng.normal(0, 1, out.shape).astype(np.float32), 1.0) * noise * out.std()
    return out.astype(np.float32), origin


def smooth_rmsf_field(xyz: np.ndarray, seed: int, lo: float = 0.4, hi: float = 3.0) -> np.ndarray:
    """Per-atom RMSF that varies smoothly in space (random Gaussian bumps), log-uniform between lo and hi Å."""
    rng = np.random.default_rng(seed)
    centers = xyz[rng.choice(len(xyz), 6, replace=False)]
    f = np.zeros(len(xyz))
    for c in centers:
        f += rng.normal() * np.exp(-np.sum((xyz - c) ** 2, axis=1) / (2 * 12.0 ** 2))
    f = (f - f.min()) / (np.ptp(f) + 1e-9)
    return np.exp(np.log(lo) + f * (np.log(hi) - np.log(lo)))


def linear_onnx_model(path: Path, weights: np.ndarray, bias: float, spec, name: str = "test-linear") -> Path:
    """A fully convolutional ONNX model: one Conv3d with a box^3 kernel (a linear function of the patch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from chimerax.defmap.network import make_metadata
    box = spec.box
    w = numpy_helper.from_array(weights.reshape(1, 1, box, box, box).astype(np.float32), "W")
    b = numpy_helper.from_array(np.array([bias], dtype=np.float32), "B")
    node = helper.make_node("Conv", ["density", "W", "B"], ["log10_rmsf"], kernel_shape=[box] * 3)
    graph = helper.make_graph(
        [node], name,
        [helper.make_tensor_value_info("density", TensorProto.FLOAT, ["N", 1, "D", "H", "W"])],
        [helper.make_tensor_value_info("log10_rmsf", TensorProto.FLOAT, ["N", 1, "d", "h", "w"])],
        initializer=[w, b])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in make_metadata(name, spec, fully_convolutional=True, description="test model",
                              flops_per_patch=2.0 * box ** 3).items():
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    write_stages(path)
    return path


def write_stages(path: Path) -> Path | None:
    """The model's shared-feature side file, as ``defmap-train export`` and ``defmap-train stages`` write it."""
    from defmap_train.export import write_stages
    return write_stages(path)


def train_linear_model(patches: np.ndarray, labels: np.ndarray, ridge: float = 1.0) -> tuple[np.ndarray, float]:
    """Ridge regression of labels on flattened patches: a small model really trained on data."""
    X = patches.reshape(len(patches), -1).astype(np.float64)
    mu = X.mean(axis=0)
    ym = labels.mean()
    Xc = X - mu
    w = np.linalg.solve(Xc.T @ Xc + ridge * len(X) * np.eye(X.shape[1]) * 1e-3, Xc.T @ (labels - ym))
    return w, float(ym - mu @ w)


# The shipped network's shape: a fully convolutional, valid-padding 3D CNN (one input channel, one output).
FCN_LAYERS = ((1, 16, 3), (16, 32, 3), (32, 64, 3), (64, 128, 4), (128, 64, 1), (64, 1, 1))
LEAKY_ALPHA = 0.01


def fcn_flops_per_output(layers=FCN_LAYERS) -> float:
    """FLOPs (2 x multiply-adds) per output voxel when the network runs densely (every layer shares its work)."""
    return float(sum(2 * cin * cout * k ** 3 for cin, cout, k in layers))


def fcn_flops_per_patch(box: int = 10, layers=FCN_LAYERS) -> float:
    """FLOPs of one patch evaluated alone (each layer over its whole valid output)."""
    total, n = 0.0, box
    for cin, cout, k in layers:
        n = n - k + 1
        total += 2.0 * cin * cout * k ** 3 * n ** 3
    return total


def fcn_onnx_model(path: Path, spec, seed: int = 0, name: str = "standin-fcn-5A", layers=FCN_LAYERS,
                   last_bias: dict[int, float] | None = None, metadata: dict | None = None) -> Path:
    """A stand-in with the shipped architecture and random (He-scaled) weights, until training's models land.

    Input ``density`` (N,C,D,H,W), output ``log10_rmsf`` (N,K,D-9,H-9,W-9) for the default layers, C and K the first
    layer's inputs and the last layer's outputs; LeakyReLU between convolutions, none after the last one.
    ``last_bias`` sets chosen output channels' biases; ``metadata`` adds keys to the DEFMap metadata JSON.
    """
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from chimerax.defmap.network import META_KEY, make_metadata
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "density"
    for i, (cin, cout, k) in enumerate(layers):
        last = i == len(layers) - 1
        gain = 0.25 if last else 1.0  # outputs spread like log10 RMSF (SD ~0.3), not ~1
        w = rng.normal(0, gain * np.sqrt(2.0 / (cin * k ** 3)), (cout, cin, k, k, k)).astype(np.float32)
        b = rng.normal(0, 0.05, cout).astype(np.float32)
        for ch, v in (last_bias or {}).items() if last else ():
            b[ch] = v
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        y = "log10_rmsf" if last else f"c{i}"
        nodes.append(helper.make_node("Conv", [x, f"W{i}", f"B{i}"], [y], kernel_shape=[k] * 3))
        if not last:
            nodes.append(helper.make_node("LeakyRelu", [y], [f"a{i}"], alpha=LEAKY_ALPHA))
            y = f"a{i}"
        x = y
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("density", TensorProto.FLOAT, ["N", layers[0][0], "D", "H", "W"])],
        [helper.make_tensor_value_info("log10_rmsf", TensorProto.FLOAT, ["N", layers[-1][1], "d", "h", "w"])],
        initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    meta = make_metadata(name, spec, fully_convolutional=True, description="stand-in: shipped architecture, "
                         "random weights", flops_per_patch=fcn_flops_per_patch(spec.box, layers))
    if metadata:
        meta[META_KEY] = json.dumps({**json.loads(meta[META_KEY]), **metadata}, sort_keys=True)
    for k, v in meta.items():
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    write_stages(path)
    return path


def simulated_1aku(voxel: float = 1.2):
    """1AKU's heavy atoms and a 5 Å map simulated from them (RMSF 1 Å everywhere): (xyz, map, xyz_to_ijk,
    ijk_to_xyz), the small shared case of the inference-path tests."""
    from chimerax.defmap import preprocess as pp
    xyz = read_heavy_atoms(shared_path("structures", "1aku.pdb"))
    m, origin = simulate_map(xyz, np.full(len(xyz), 1.0), resolution=5.0, voxel=voxel)
    xyz_to_ijk, ijk_to_xyz = pp.grid_transforms(origin, (voxel,) * 3)
    return xyz, m, xyz_to_ijk, ijk_to_xyz


def add_map(session, values, origin, name="sim"):
    """A simulated map as a ChimeraX volume (1 Å voxels)."""
    from chimerax.map import volume_from_grid_data
    from chimerax.map_data import ArrayGridData
    return volume_from_grid_data(ArrayGridData(values, origin=tuple(origin), step=(1.0, 1.0, 1.0), name=name),
                                 session, show_dialog=False)
