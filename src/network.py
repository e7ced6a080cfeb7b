"""ONNX models: metadata, discovery, choice by resolution, and inference with onnxruntime (no ChimeraX imports).

Everything that shapes the input (voxel size, box, filter resolution, normalization) and the meaning of the output is
read from the JSON stored under the ``defmap`` key of the ONNX file's metadata, so a retrained model can never be fed
features it was not trained on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .preprocess import FeatureSpec, Grid
from .rotations import rotate_patches

META_KEY = "defmap"
FORMAT_VERSION = 1
OUTPUTS = ("log10_rmsf_angstrom",)
VARIANCE_OUTPUT = "log_variance"  # optional second output: log of the predicted variance of log10 RMSF
INPUT_CHANNELS = ("density", "model_density")  # the map; the fitted model's own density (preprocess.model_density)
MODEL_DIR_ENV = "DEFMAP_MODEL_PATH"
PACKAGE_MODEL_DIR = Path(__file__).resolve().parent / "onnx_models"


class ModelError(ValueError):
    """A model file that cannot be used; the message is one sentence for the user."""


@dataclass
class ModelInfo:
    path: Path
    name: str
    spec: FeatureSpec
    output: str
    fully_convolutional: bool
    description: str = ""
    flops_per_patch: float | None = None
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    channels: tuple = ("density",)  # input channels, in order
    outputs: tuple = ("log10_rmsf_angstrom",)  # output channels, in order
    calibration: dict = field(default_factory=dict)  # sd_scale, the weights, ...; fitted_on and *_fitted_on say where

    @property
    def resolution(self) -> float:
        return self.spec.filter_resolution

    def fitted_where(self, key: str = "fitted_on") -> str:
        """Where the calibration entry ``key`` (``fitted_on``: the CV's weights; ``sd_slope_fitted_on``: the SD's
        shape; ``fitted_on`` where ``key`` is absent) was fitted, in a few words for the log: ATLAS MD labels, or the
        engine's simulated ones."""
        text = str(self.calibration.get(key, self.calibration.get("fitted_on", "")))
        return "atlas_train's ATLAS MD" if "atlas_train" in text or "ATLAS MD" in text else "the simulated CV"

    @property
    def needs_structure(self) -> bool:
        """True when the model reads the fitted model's density as a second channel (structure mode only)."""
        return "model_density" in self.channels

    @property
    def has_variance(self) -> bool:
        return VARIANCE_OUTPUT in self.outputs

    def summary(self) -> dict:
        return {"name": self.name, "path": str(self.path), "resolution": self.resolution,
                "voxel_size": self.spec.voxel_size, "box": self.spec.box, "output": self.output,
                "fully_convolutional": self.fully_convolutional, "description": self.description,
                "metrics": self.metrics, "channels": list(self.channels), "outputs": list(self.outputs)}


def make_metadata(name: str, spec: FeatureSpec, *, fully_convolutional: bool, description: str = "",
                  flops_per_patch: float | None = None, metrics: dict | None = None,
                  training: dict | None = None, output: str = "log10_rmsf_angstrom") -> dict[str, str]:
    """The metadata_props dict to embed in an exported ONNX model (training and tests use this)."""
    spec.validate()
    meta = {"format_version": FORMAT_VERSION, "name": name, "features": spec.to_dict(), "output": output,
            "fully_convolutional": bool(fully_convolutional), "description": description,
            "flops_per_patch": flops_per_patch, "metrics": metrics or {}, "training": training or {}}
    return {META_KEY: json.dumps(meta, sort_keys=True)}


def parse_metadata(path: Path, props: dict[str, str]) -> ModelInfo:
    if META_KEY not in props:
        raise ModelError(f"Model {path.name} has no DEFMap metadata ('{META_KEY}' key); export it with defmap-train")
    try:
        meta = json.loads(props[META_KEY])
        if not isinstance(meta, dict):
            raise ValueError(f"it is a JSON {type(meta).__name__}, not an object")
        if int(meta.get("format_version", 0)) != FORMAT_VERSION:
            raise ValueError(f"format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
        spec = FeatureSpec.from_dict(meta["features"])
        output = str(meta["output"])
        if output not in OUTPUTS:
            raise ValueError(f"output '{output}' is not one of {', '.join(OUTPUTS)}")
        channels = tuple(str(c) for c in (meta.get("input_channels") or ["density"]))
        if channels[0] != "density" or any(c not in INPUT_CHANNELS for c in channels) or len(set(channels)) < len(
                channels):
            raise ValueError(f"input_channels {list(channels)} must start with 'density' and use only "
                             f"{', '.join(INPUT_CHANNELS)}")
        outputs = tuple(str(c) for c in (meta.get("outputs") or [output]))
        if outputs[0] != output or any(o not in OUTPUTS + (VARIANCE_OUTPUT,) for o in outputs[1:]):
            raise ValueError(f"outputs {list(outputs)} must start with '{output}'")
        return ModelInfo(path=path, name=str(meta.get("name") or path.stem), spec=spec, output=output,
                         fully_convolutional=bool(meta.get("fully_convolutional", False)),
                         description=str(meta.get("description", "")),
                         flops_per_patch=meta.get("flops_per_patch"), metrics=dict(meta.get("metrics") or {}),
                         training=dict(meta.get("training") or {}), channels=channels, outputs=outputs,
                         calibration=dict(meta.get("calibration") or {}))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"Model {path.name} has inconsistent DEFMap metadata: {e}") from None


def _ort():
    import onnxruntime
    return onnxruntime


_CUDA_PRELOADED = False


def _preload_cuda(ort) -> None:
    """Load CUDA and cuDNN from NVIDIA's pip packages (``pip install onnxruntime-gpu[cuda,cudnn]``), which are not on
    the library path; a system CUDA install needs nothing.  Once per process, and only when those packages exist."""
    global _CUDA_PRELOADED
    if _CUDA_PRELOADED:
        return
    _CUDA_PRELOADED = True
    import importlib.util
    if hasattr(ort, "preload_dlls") and importlib.util.find_spec("nvidia") is not None:
        try:
            ort.preload_dlls()
        except Exception:  # a broken CUDA install: the CUDA provider then fails to start, which we report
            pass


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Read a model's metadata without running it."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"Model file {p} does not exist")
    return parse_metadata(p, read_metadata(p))


def read_metadata(path: Path) -> dict[str, str]:
    """The model's ``metadata_props``, read by onnxruntime: a CPU session with one thread and no graph optimization
    (about 5 ms for a shipped model, as fast as decoding the protocol buffer in Python was)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 4
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].rsplit("failed:", 1)[-1].strip()
        raise ModelError(f"Model file {path.name} is not a readable ONNX model ({first[:200]})") from None
    return dict(sess.get_modelmeta().custom_metadata_map)


def model_dirs() -> list[Path]:
    dirs = [Path(d) for d in os.environ.get(MODEL_DIR_ENV, "").split(os.pathsep) if d]
    # a source checkout (src/ linked into the venv) keeps its models in the repository's onnx_models/
    checkout = PACKAGE_MODEL_DIR.parent.parent / "onnx_models"
    return dirs + [PACKAGE_MODEL_DIR] + ([checkout] if (checkout.parent / "bundle_info.xml").is_file() else [])


def installed_models() -> list[ModelInfo]:
    """Models found in $DEFMAP_MODEL_PATH and the bundle's own onnx_models folder, sharpest first."""
    seen, found = set(), []
    for d in model_dirs():
        for p in sorted(d.glob("*.onnx")) if d.is_dir() else []:
            if p.name in seen:
                continue
            try:
                found.append(read_model_info(p))
                seen.add(p.name)
            except ModelError:
                continue
    return sorted(found, key=lambda m: (m.resolution, m.name))


def choose_model(models: list[ModelInfo], map_resolution: float | None, structure: bool = False) -> ModelInfo:
    """The sharpest model trained at or coarser than the map's resolution (the coarsest if none is).

    Without a structure (voxel mode) only map-only models qualify; with one, models that also read the fitted model's
    density (``needs_structure``) are preferred whenever any is installed."""
    if not models:
        raise ModelError("No DEFMap model is installed; give one with 'model PATH' or set DEFMAP_MODEL_PATH")
    kind = [m for m in models if m.needs_structure == structure]
    if not kind and not structure:
        raise ModelError("No map-only DEFMap model is installed (voxel mode has no fitted model for the models that "
                         "read one); give one with 'model PATH'")
    models = kind or models
    if map_resolution is None:
        return models[0]
    ok = [m for m in models if m.resolution >= map_resolution - 1e-6]
    return ok[0] if ok else models[-1]


def resolve_model(name_or_path: str | None, map_resolution: float | None, structure: bool = False) -> ModelInfo:
    if name_or_path is None:
        return choose_model(installed_models(), map_resolution, structure)
    p = Path(os.path.expanduser(name_or_path))
    if p.suffix == ".onnx" or p.exists():
        return _fits_mode(read_model_info(p), structure)
    models = installed_models()
    for m in models:
        if name_or_path in (m.name, m.path.stem, m.path.name):
            return _fits_mode(m, structure)
    names = ", ".join(m.name for m in models) or "none"
    raise ModelError(f"No installed model is named '{name_or_path}' (installed: {names})")


def _fits_mode(info: ModelInfo, structure: bool) -> ModelInfo:
    if info.needs_structure and not structure:
        raise ModelError(f"Model {info.name} also reads the fitted model's density, so it needs a structure; voxel "
                         "mode needs a map-only model")
    return info


def calibrated_sd(head_sd: np.ndarray, prediction: np.ndarray, calibration: dict, run_factor: float = 1.0,
                  disagreement: np.ndarray | None = None) -> np.ndarray:
    """The SD a variance model reports: its head's SD to the power ``sd_power`` x ``sd_scale`` x exp(``sd_slope`` x
    the prediction's z-score over the scored atoms + ``sd_disagreement`` x ``disagreement``) x ``run_factor``.  On
    real MD flexible residues are predicted less surely; where the prediction and the model's packing disagree
    (``expected.packing_disagreement``, per atom) one of them is wrong; a run that tracks MD less closely errs more on
    every residue (``run_factor``, ``recipe.run_sd_factor``, when the calibration has an ``sd_run``); and the head,
    trained on simulated labels, is only partly right.  The shipped models' numbers are fitted on ATLAS MD of
    atlas_train by ``defmap-train md-calibrate``; power 1, scale 1, slope and disagreement 0 when absent."""
    from .combination import zscore
    slope = float(calibration.get("sd_slope", 0.0))
    head = np.asarray(head_sd, dtype=np.float64) ** float(calibration.get("sd_power", 1.0))
    shape = slope * zscore(prediction)
    if disagreement is not None:
        shape = shape + float(calibration.get("sd_disagreement", 0.0)) * np.asarray(disagreement, dtype=np.float64)
    return head * float(calibration.get("sd_scale", 1.0)) * np.exp(shape) * float(run_factor)


Progress = Callable[[float], None]  # called with the fraction of centres done (status-line progress)
DENSE_TILE = 32  # dense tiles of 32³ outputs: 16-64 ran at the same GFLOP/s; a 32 tile needs ~50 MB of activations
DENSE_SPEEDUP = 1.7  # dense valid convolutions run ~1.7x the GFLOP/s of shared-feature gathers (tests/benchmarks)


class Predictor:
    """An onnxruntime session for one model, with the provider it really runs on."""

    def __init__(self, info: ModelInfo, device: str = "auto", threads: int | None = None):
        ort = _ort()
        if device not in ("auto", "gpu", "cpu"):
            raise ModelError(f"device must be auto, gpu or cpu, not '{device}'")
        available = ort.get_available_providers()
        if device == "gpu" and "CUDAExecutionProvider" not in available:
            raise ModelError("device gpu was asked for, but this onnxruntime has no CUDA provider (install "
                             "onnxruntime-gpu); use device auto or cpu")
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "gpu") and "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            _preload_cuda(ort)
        if device == "auto":
            ort.set_default_logger_severity(4)  # a failed CUDA start is expected here; we report what runs
        so = ort.SessionOptions()
        so.log_severity_level = 4 if device == "auto" else 3  # 'auto' falls back quietly; we report what ran
        so.intra_op_num_threads = threads or os.cpu_count() or 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # spinning worker threads lose badly when the cores are shared with other work (measured, tests/benchmarks)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = so.intra_op_num_threads
        try:
            self.session = ort.InferenceSession(str(info.path), sess_options=so, providers=providers)
        except Exception as e:
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ModelError(f"onnxruntime could not load model {info.path.name}: {first}") from None
        used = self.session.get_providers()
        if device == "gpu" and "CUDAExecutionProvider" not in used:
            raise ModelError("device gpu was asked for, but the CUDA provider failed to start (CUDA 13 and cuDNN 9 "
                             "libraries are needed); use device auto or cpu")
        self.provider = used[0]
        self.note = ""
        if device == "auto" and "CUDAExecutionProvider" in providers and self.provider != "CUDAExecutionProvider":
            self.note = ("the CUDA provider could not start (it needs CUDA 13 and cuDNN 9), "
                         "so ONNX Runtime runs on the CPU")
        self.info = info
        inp = self.session.get_inputs()
        if len(inp) != 1 or len(inp[0].shape) != 5:
            raise ModelError(f"Model {info.path.name} must take one 5-D input (N, 1, D, H, W)")
        self.input_name = inp[0].name
        box = info.spec.box
        try:  # one empty patch: the network must give exactly one value for the box its metadata promises
            empty = np.zeros((1, len(info.channels), box, box, box), np.float32)
            probe = np.asarray(self.session.run(None, {self.input_name: empty})[0])
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ModelError(f"Model {info.path.name} cannot run on a {box}³ patch, the box in its metadata: "
                             f"{first}") from None
        if probe.size != len(info.outputs):
            raise ModelError(f"Model {info.path.name} gives {probe.size} values per {box}³ patch instead of "
                             f"{len(info.outputs)}, so its network does not match the box and outputs in its metadata")
        self.default_batch = 1024 if self.provider == "CUDAExecutionProvider" else 256
        self.seconds = 0.0
        self.patches = 0
        self.flops = 0.0  # network FLOPs executed (2 x multiply-adds), for GFLOP/s reports
        self.method = ""  # how the last prediction ran: patches, dense or shared
        self._chain = None  # the conv chain from the model's side file (shared_features), read on first use
        # a model with a variance output: log-variance per centre of the last prediction (None otherwise)
        self.last_log_variance: np.ndarray | None = None

    def conv_layers(self):
        """The model as a chain of valid 3-D convolutions (shared_features.ConvChain) from the side file that
        training's export writes beside it, or None without one (then the model runs per patch or in dense tiles)."""
        if self._chain is None:
            from . import shared_features
            self._chain = shared_features.conv_chain(self.info.path) or []
        return self._chain or None

    def _flops_per_patch(self) -> float:
        layers = self.conv_layers()
        if layers:
            from .shared_features import chain_flops
            return chain_flops(layers, (self.info.spec.box,) * 3)
        return float(self.info.flops_per_patch or 0.0)

    def predict_centers(self, grid: Grid, centers: np.ndarray, batch_size: int | None = None,
                        rotation: int = 0, allow_dense: bool = False, progress: Progress | None = None) -> np.ndarray:
        """One prediction per centre voxel by the fastest exact method: shared-feature evaluation on the CPU when
        the model is a plain conv chain (chimerax.defmap.shared_features; any number of input channels and outputs),
        otherwise batched per-patch evaluation (or dense tiles, for unrotated multi-channel/output models).  With
        ``allow_dense``, dense tiles (:meth:`predict_dense`) are used instead when they need fewer FLOPs after
        weighting by their measured speed advantage (``DENSE_SPEEDUP``): when centres fill most of the lattice.
        ``progress`` (if given) is called with the fraction of centres done, after each batch, tile or block.
        A model with a variance output sets ``last_log_variance`` (None otherwise), as every method does."""
        layers = self.conv_layers() if self.provider == "CPUExecutionProvider" else None
        if not layers or len(centers) == 0:
            # off the CPU (or not a conv chain), dense tiles are the fast exact path of multi-channel/output models
            multi = len(self.info.channels) > 1 or len(self.info.outputs) > 1
            if (allow_dense or (multi and rotation == 0)) and self.info.fully_convolutional and len(centers):
                return self.predict_dense(grid, centers, progress=progress)
            return self.predict_patches(grid, centers, batch_size, rotation, progress)
        from .shared_features import SparseConvNet
        if getattr(self, "_sparse", None) is None:
            self._sparse = SparseConvNet(layers, threads=self.threads)
        nch = 1 if grid.values.ndim == 3 else grid.values.shape[0]
        if nch != self._sparse.cin:
            raise ModelError(f"Model {self.info.path.name} reads {self._sparse.cin} input channel(s), not {nch}")
        if allow_dense and rotation == 0:
            starts = np.asarray(centers) - self.info.spec.box // 2
            shared = self._sparse.estimate_flops(grid.values.shape[-3:], starts)
            if self.dense_flops(grid, centers) < DENSE_SPEEDUP * shared:
                return self.predict_dense(grid, centers, progress=progress)
        net = self._sparse.rotated(rotation)
        t0 = time.perf_counter()
        f0 = net.flops
        out = net.predict(grid.values, np.asarray(centers) - self.info.spec.box // 2, progress)
        self.seconds += time.perf_counter() - t0
        self.flops += net.flops - f0
        self.patches += len(centers)
        self.method = "shared"
        if out.ndim == 2:  # (n, K): mean, then log-variance
            self.last_log_variance = np.ascontiguousarray(out[:, 1]) if len(self.info.outputs) > 1 else None
            return np.ascontiguousarray(out[:, 0])
        self.last_log_variance = None
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            y = np.asarray(self.session.run(None, {self.input_name: x})[0])
        except Exception as e:  # shapes or types that contradict the metadata
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ModelError(f"Model {self.info.path.name} failed on {'×'.join(map(str, x.shape[2:]))} input: "
                             f"{first}") from None
        self.seconds += time.perf_counter() - t0
        if y.ndim == 0 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.floating):
            raise ModelError(f"Model {self.info.path.name} returned output of shape {y.shape} and type {y.dtype} "
                             f"for {x.shape[0]} inputs; expected one float per input")
        return y

    def predict_patches(self, grid: Grid, centers: np.ndarray, batch_size: int | None = None,
                        rotation: int = 0, progress: Progress | None = None) -> np.ndarray:
        """One prediction per centre voxel, streamed in batches so memory stays flat."""
        from .preprocess import iter_patch_batches
        bs = int(batch_size or self.default_batch)
        out = np.empty(len(centers), dtype=np.float32)
        k = len(self.info.outputs)
        lv = np.empty(len(centers), dtype=np.float32) if k > 1 else None
        s = 0
        chans = _channels(grid.values)
        for batches in zip(*(iter_patch_batches(c, centers, self.info.spec.box, bs) for c in chans)):
            batch = batches[0] if len(batches) == 1 else np.concatenate(batches, axis=1)
            if rotation:
                batch = np.ascontiguousarray(rotate_patches(batch, rotation))
            y = self._run(batch).reshape(len(batch), -1)
            if y.shape[1] != k:
                raise ModelError(f"Model {self.info.path.name} gives {y.shape[1]} values per {self.info.spec.box}³ "
                                 f"patch instead of {k}, so its network does not match the box in its metadata")
            out[s:s + len(batch)] = y[:, 0]
            if lv is not None:
                lv[s:s + len(batch)] = y[:, 1]
            s += len(batch)
            if progress:
                progress(s / len(centers))
        self.last_log_variance = lv
        self.patches += len(centers)
        self.flops += len(centers) * self._flops_per_patch()
        self.method = "patches"
        return out

    def dense_flops(self, grid: Grid, centers: np.ndarray, tile: int = DENSE_TILE) -> float:
        """FLOPs :meth:`predict_dense` executes for these centres (tiles that hold at least one centre)."""
        from .shared_features import chain_flops
        layers = self.conv_layers()
        if not layers:
            return float("inf")
        box = self.info.spec.box
        starts = np.asarray(centers) - box // 2
        t0 = np.unique(starts // tile, axis=0) * tile
        ext = np.minimum(t0 + tile + box - 1, np.array(grid.values.shape[-3:])) - t0
        shapes, counts = np.unique(ext, axis=0, return_counts=True)
        return float(sum(c * chain_flops(layers, tuple(sh)) for sh, c in zip(shapes, counts)))

    def predict_dense(self, grid: Grid, centers: np.ndarray, tile: int = DENSE_TILE,
                      progress: Progress | None = None) -> np.ndarray:
        """Fully convolutional evaluation: whole tiles in one pass, equal to per-patch evaluation at each centre."""
        if not self.info.fully_convolutional:
            raise ModelError(f"Model {self.info.name} is not fully convolutional, so it cannot run densely")
        from .shared_features import chain_flops
        layers = self.conv_layers()
        box = self.info.spec.box
        lo = box // 2
        starts = centers - lo  # output voxel o holds the patch that starts at o
        out = np.empty(len(centers), dtype=np.float32)
        lv = np.empty(len(centers), dtype=np.float32) if len(self.info.outputs) > 1 else None
        x = np.stack(_channels(grid.values))  # (C, z, y, x)
        tile_of = starts // tile
        order = np.lexsort(tile_of.T[::-1])
        keys = tile_of[order]
        breaks = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
        done = 0
        for grp in np.split(order, breaks):
            t0 = tile_of[grp[0]] * tile
            sub = x[:, t0[0]:t0[0] + tile + box - 1, t0[1]:t0[1] + tile + box - 1, t0[2]:t0[2] + tile + box - 1]
            y = self._run(np.ascontiguousarray(sub[None], dtype=np.float32))[0]
            rel = starts[grp] - t0
            out[grp] = y[0][rel[:, 0], rel[:, 1], rel[:, 2]]
            if lv is not None:
                lv[grp] = y[1][rel[:, 0], rel[:, 1], rel[:, 2]]
            if layers:
                self.flops += chain_flops(layers, sub.shape[1:])
            done += len(grp)
            if progress:
                progress(done / len(centers))
        self.last_log_variance = lv
        self.patches += len(centers)
        self.method = "dense"
        return out

    def close(self) -> None:
        """Drop this predictor's onnxruntime sessions (the model's and the shared-feature stages') now, rather than
        whenever the interpreter's teardown gets to them."""
        self.session = None
        self._sparse = None
        self._chain = None


def _channels(values: np.ndarray) -> list[np.ndarray]:
    """A grid's input channels: a 3-D map is one channel, a (C, z, y, x) stack (preprocess.stack_channels) is C."""
    return [values] if values.ndim == 3 else list(values)
