"""Checkpoint -> ONNX (opset 17, dynamic batch; dynamic spatial dims for the FCN) with the bundle's metadata embedded,
then a torch vs onnxruntime parity check; and beside each model its shared-feature side file (``NAME.stages.npz``:
the conv chain and the ONNX graphs of its stages, see chimerax.defmap.shared_features), which the bundle reads with
numpy because ChimeraX ships no ``onnx``.  ``defmap-train stages MODEL.onnx ...`` adds side files to existing models
without changing them.

torch is imported only where a network is built or run, so the side-file writer (:func:`write_stages`) also runs in
a process that holds a ChimeraX session (the bundle's tests), where importing torch is unsafe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chimerax.defmap import shared_features as sf
from chimerax.defmap.network import make_metadata

if TYPE_CHECKING:
    import torch

OPSET = 17
PARITY_TOL = 1e-5
STAGES_TOL = 1e-4  # shared features vs the whole network: float32 sums in another order (|diff| ~1e-6 measured)


def save_checkpoint(path: Path, model: torch.nn.Module, arch: str, resolution: float, info: dict) -> None:
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "arch": arch, "resolution": resolution, "info": info,
                "in_channels": getattr(model, "in_channels", 1), "outputs": getattr(model, "outputs", 1)}, path)


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    import torch

    from .model import build
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build(ck["arch"], ck.get("in_channels", 1), ck.get("outputs", 1))
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck


def export_onnx(model: torch.nn.Module, out: Path, name: str, resolution: float, metrics: dict | None = None,
                training: dict | None = None, description: str = "", extra: dict | None = None) -> float:
    """Write the ONNX file and return the max |torch - onnxruntime| on random inputs (raises above PARITY_TOL).

    ``extra``: more top-level metadata keys (e.g. ``calibration``: the SD scale and ANM weight fitted on the
    protein-disjoint CV of the simulated set).  A conv-chain network also gets its side file (:func:`write_stages`)."""
    import onnx
    import torch

    from .dataset import spec_for
    from .model import flops_per_patch
    model = model.eval()
    fcn = bool(getattr(model, "fully_convolutional", False))
    spec = spec_for(resolution)
    n_in, n_out = getattr(model, "in_channels", 1), getattr(model, "outputs", 1)
    dummy = torch.zeros(2, n_in, spec.box + 2 * fcn, spec.box + 2 * fcn, spec.box + 2 * fcn)
    axes = {"density": {0: "N"}, "log10_rmsf": {0: "N"}}
    if fcn:
        axes = {"density": {0: "N", 2: "D", 3: "H", 4: "W"}, "log10_rmsf": {0: "N", 2: "D_out", 3: "H_out", 4: "W_out"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (dummy,), str(out), input_names=["density"], output_names=["log10_rmsf"],
                      dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    m = onnx.load(str(out))
    meta = make_metadata(name, spec, fully_convolutional=fcn, flops_per_patch=flops_per_patch(model, spec.box),
                         description=description or _describe(fcn, resolution), metrics=metrics or {},
                         training=training or {})
    meta = {k: _with_channels(v, n_in, n_out, extra) for k, v in meta.items()}
    del m.metadata_props[:]
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    m.producer_name = "defmap-train"
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    dev = parity(model, out, fcn, spec.box, n_in)
    write_stages(out)
    return dev


def _describe(fcn: bool, resolution: float) -> str:
    kind = "fully convolutional DEFMap variant" if fcn else "DEFMap reference CNN"
    return (f"{kind} for maps at about {resolution:g} Å or better; predicts log10 RMSF (Å) per 10³ patch. Trained on "
            "simulated ensemble-average maps of normal-mode (ANM) ensembles, not MD: see MODEL_CARD.md")


INPUT_CHANNELS = {1: ["density"], 2: ["density", "model_density"]}
OUTPUTS = {1: ["log10_rmsf_angstrom"], 2: ["log10_rmsf_angstrom", "log_variance"]}


def _with_channels(value: str, n_in: int, n_out: int, extra: dict | None = None) -> str:
    """Add the input channels and output list to the bundle's metadata JSON (older files lack them: one channel,
    one output).  The first output keeps the name the bundle knows, so 'output' stays valid for older readers."""
    meta = json.loads(value)
    meta["input_channels"] = INPUT_CHANNELS[n_in]
    meta["outputs"] = OUTPUTS[n_out]
    meta.update(extra or {})
    return json.dumps(meta, sort_keys=True)


def parity(model: torch.nn.Module, path: Path, fcn: bool, box: int, channels: int = 1) -> float:
    import onnxruntime as ort
    import torch
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    c = channels
    shapes = [(3, c, box, box, box)] + ([(2, c, box + 7, box + 3, box + 12)] if fcn else [(17, c, box, box, box)])
    worst = 0.0
    with torch.no_grad():
        for s in shapes:
            x = np.abs(rng.normal(0, 1, s)).astype(np.float32)
            a = model(torch.from_numpy(x)).numpy()
            b = sess.run(None, {"density": x})[0]
            if a.shape != b.shape:
                raise AssertionError(f"torch shape {a.shape} != onnxruntime shape {b.shape}")
            worst = max(worst, float(np.abs(a - b).max()))
    if worst > PARITY_TOL:
        raise AssertionError(f"torch vs onnxruntime differ by {worst:.2e} > {PARITY_TOL:g}")
    return worst


def export_checkpoint(ckpt: Path, out: Path, name: str | None = None, metrics_json: str | None = None) -> None:
    model, ck = load_checkpoint(ckpt)
    res = float(ck["resolution"])
    metrics = json.loads(Path(metrics_json).read_text()).get(f"{res:g}", {}) if metrics_json else {}
    info = {k: v for k, v in ck.get("info", {}).items() if k != "history"}
    dev = export_onnx(model, out, name or f"defmap-{res:g}A", res, metrics=metrics, training=info)
    print(f"{out}: parity max |torch - onnxruntime| = {dev:.2e}, {out.stat().st_size / 1e6:.2f} MB")


# ------------------------------------------------------------------------------------ shared-feature side file
def conv_chain(model) -> list[sf.ConvLayer] | None:
    """An ONNX model's graph as a chain of stride-1, unpadded, cubic 3-D convolutions with pointwise activations
    (shared_features.ConvLayer list), or None: any node, attribute or topology outside that pattern."""
    from onnx import helper, numpy_helper
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i.name for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) != 1:
        return None
    cur, layers = inputs[0], []
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            if "value" not in attrs:
                return None
            consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
            continue
        if not node.input or node.input[0] != cur or len(node.output) != 1:
            return None
        if node.op_type == "Conv":
            layer = _conv_layer(node, attrs, consts)
            if layer is None or (layers and layers[-1].cout != layer.cin):
                return None
            layers.append(layer)
        elif node.op_type in sf.ACTIVATIONS:
            if not layers or layers[-1].activation is not None:
                return None
            if node.op_type != "Identity":
                layers[-1].activation = node.op_type
                layers[-1].alpha = float(attrs.get("alpha", 0.01))
        else:
            return None
        cur = node.output[0]
    return layers if layers and cur == g.output[0].name else None


def _conv_layer(node, attrs: dict, consts: dict) -> sf.ConvLayer | None:
    w = consts.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim != 5 or len(set(w.shape[2:])) != 1:
        return None
    if len(node.input) > 2 and node.input[2]:
        b = consts.get(node.input[2])
        if b is None:
            return None
    else:
        b = np.zeros(w.shape[0], dtype=np.float32)
    if (any(v != 1 for v in attrs.get("strides", [1])) or any(v != 1 for v in attrs.get("dilations", [1]))
            or any(v != 0 for v in attrs.get("pads", [0])) or attrs.get("group", 1) != 1
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")):
        return None
    return sf.ConvLayer(np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32).reshape(-1))


def stage_graph(stage: list[sf.ConvLayer]) -> bytes:
    """The ONNX graph of one stage on gathered rows (shared_features module docstring): MatMul + Add + activation per
    layer, the weights left as external initializers so that every rotation of the network runs the same graph."""
    from onnx import TensorProto, helper
    nodes, inits, x = [], [], "x"
    for name, a in sf.stage_weights(stage).items():
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=a.shape)
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", name  # never read: the bundle hands the arrays to onnxruntime
        inits.append(t)
    for i, ly in enumerate(stage):
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"B{i}"],
                                                                                         [f"a{i}"])]
        x = f"a{i}"
        if ly.activation == "LeakyRelu":
            nodes.append(helper.make_node("LeakyRelu", [x], [f"r{i}"], alpha=ly.alpha))
            x = f"r{i}"
        elif ly.activation == "Relu":
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    kdim = stage[0].k ** 3 * stage[0].cin
    graph = helper.make_graph(nodes, "stage", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", kdim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", stage[-1].cout])],
                              initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8,
                          producer_name="defmap-train")
    return m.SerializeToString()  # checked by running it (stages_parity): onnx's checker looks for the files


def write_stages(path: Path) -> Path | None:
    """Write the side file of the ONNX model at ``path`` when its network is a conv chain, checked against the whole
    network on a random input at rotations 0 and 5; remove a stale side file when it is not a chain.  The .onnx file
    is only read.  Returns the side file, or None."""
    import onnx
    path = Path(path)
    layers = conv_chain(onnx.load(str(path)))
    side = sf.stages_path(path)
    if layers is None:
        side.unlink(missing_ok=True)
        return None
    sf.save_chain(path, layers, [stage_graph(st) for st in sf.split_stages(layers)])
    chain = sf.conv_chain(path)
    if chain is None:
        raise AssertionError(f"{side.name} does not read back")
    dev = stages_parity(path, chain)
    if dev > STAGES_TOL:
        side.unlink()
        raise AssertionError(f"shared features vs onnxruntime differ by {dev:.2e} > {STAGES_TOL:g} for {path.name}")
    return side


def stages_parity(path: Path, chain: sf.ConvChain) -> float:
    """Max |shared features - onnxruntime| over every patch of a small random input, unrotated and rotated."""
    import onnxruntime as ort

    from chimerax.defmap.rotations import rotate_patches
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    net = sf.SparseConvNet(chain, threads=1)
    e = net.extent
    x = np.abs(np.random.default_rng(0).normal(size=(net.cin, e + 2, e + 1, e + 3))).astype(np.float32)
    starts = np.argwhere(np.ones((3, 2, 4), dtype=bool))
    patches = np.stack([x[:, z:z + e, y:y + e, w:w + e] for z, y, w in starts])
    worst = 0.0
    for rot in (0, 5):
        ref = sess.run(None, {name: np.ascontiguousarray(rotate_patches(patches, rot)) if rot else patches})[0]
        got = net.rotated(rot).predict(x, starts).reshape(len(starts), -1)
        worst = max(worst, float(np.abs(got - ref.reshape(len(starts), -1)).max()))
    return worst


def cmd_stages(a) -> None:
    for p in a.models:
        side = write_stages(Path(p))
        print(f"{side}: conv chain and stage graphs" if side else f"{p}: not a conv chain, no side file")


def add_parser(sub) -> None:
    """The ``stages`` subcommand: side files for ONNX models exported before (the shipped ones, or anyone's)."""
    s = sub.add_parser("stages", help="write MODEL.stages.npz beside each ONNX model (shared-feature evaluation); "
                       "the .onnx files are only read")
    s.add_argument("models", nargs="+", help="ONNX files")
    s.set_defaults(fn=cmd_stages)
