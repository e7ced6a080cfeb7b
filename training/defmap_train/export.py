"""Checkpoint -> ONNX (opset 17, dynamic batch; dynamic spatial dims for the FCN) with the bundle's metadata embedded,
then a torch vs onnxruntime parity check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from chimerax.defmap.network import make_metadata

from .dataset import spec_for
from .model import build, flops_per_patch

OPSET = 17
PARITY_TOL = 1e-5


def save_checkpoint(path: Path, model: torch.nn.Module, arch: str, resolution: float, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "arch": arch, "resolution": resolution, "info": info,
                "in_channels": getattr(model, "in_channels", 1), "outputs": getattr(model, "outputs", 1)}, path)


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build(ck["arch"], ck.get("in_channels", 1), ck.get("outputs", 1))
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck


def export_onnx(model: torch.nn.Module, out: Path, name: str, resolution: float, metrics: dict | None = None,
                training: dict | None = None, description: str = "", extra: dict | None = None) -> float:
    """Write the ONNX file and return the max |torch - onnxruntime| on random inputs (raises above PARITY_TOL).

    ``extra``: more top-level metadata keys (e.g. ``calibration``: the SD scale and ANM weight fitted on the
    protein-disjoint CV of the simulated set)."""
    import onnx
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
    return parity(model, out, fcn, spec.box, n_in)


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
