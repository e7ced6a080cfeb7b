"""Shared-feature evaluation of a fully convolutional DEFMap network at many centre voxels (numpy, no ChimeraX).

Neighbouring patches overlap almost entirely, so evaluating each 10³ patch on its own recomputes the same early
feature maps again and again (14.6 MFLOP per patch for the shipped network).  Here the network — a chain of valid
3-D convolutions with pointwise activations — is evaluated layer by layer only at the feature-map positions that
some requested centre needs (the Minkowski sum of the centres with the later kernels), each layer as gathered rows
times a weight matrix (sgemm).  Input channels (map, model density) sit side by side in the gathered (dz, dy, dx, c)
columns, and a network with several outputs (mean, log-variance) gives one column each.  The result equals
per-patch evaluation up to float32 summation order (|Δ| ~ 1e-6), and costs about 2.4 MFLOP per centre on a protein
(one channel, one output).

Work proceeds block by block (``block``³ centre voxels plus the receptive-field halo), so memory is bounded by the
block size and the row chunk, whatever the size of the map: at most ~100 MB of feature rows for a 64³ block filled
with centres.  Measured on 6EZ8 (2 shared cores): 64³ blocks recompute ~3 % of the features at block faces (40³:
~10 %), and 2 MB row chunks (cache-sized) ran ~25 % faster than 16 MB ones.  Two channels, two outputs (training's
v2 defmap-mapmodel-5A, 6EZ8's 18,769 atom centres, simulated 5 Å map): shared 0.4 s, dense tiles 2.3 s.

The chain comes from a side file beside the model, ``NAME.stages.npz`` (:func:`stages_path`), which training's
export writes with the ``onnx`` package (ChimeraX ships none, so the bundle neither parses nor writes ONNX itself):
the layers' weights, biases, activations and LeakyReLU slopes, the SHA-256 of the ``.onnx`` file they were read
from, and per stage (:func:`split_stages`) a serialized ONNX graph — input ``x`` (n, k³·cin), output ``y``
(n, cout), and for each layer i of the stage MatMul ``W{i}``, Add ``B{i}`` and the activation.  ``W{i}`` and
``B{i}`` are external initializers that each session is given from the layers (:func:`stage_weights`), so one graph
serves every rotation of the network; as initializers (not graph inputs) they are prepacked as constants are, which
keeps results bit-identical to graphs with the weights inside (graph inputs differ by ~1e-6).  A model without the
side file, or with one written for other bytes, is evaluated per patch or in dense tiles instead (network.py).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .rotations import ROTATIONS, inverse_rotation

ACTIVATIONS = ("LeakyRelu", "Relu", "Identity")
STAGES_SUFFIX = ".stages.npz"
STAGES_FORMAT = 1
PIPELINE = False  # overlap the next gather with onnxruntime's product: measured no gain on 2 shared cores
_NO_SPIN = True  # spinning intra-op threads lose badly when the cores are shared (measured)


@dataclass
class ConvLayer:
    weight: np.ndarray  # (cout, cin, k, k, k) float32
    bias: np.ndarray  # (cout,) float32
    activation: str | None = None  # "LeakyRelu", "Relu" or None
    alpha: float = 0.01

    @property
    def k(self) -> int:
        return int(self.weight.shape[2])

    @property
    def cin(self) -> int:
        return int(self.weight.shape[1])

    @property
    def cout(self) -> int:
        return int(self.weight.shape[0])

    def matrix(self) -> np.ndarray:
        """(k³·cin, cout): rows ordered (dz, dy, dx, cin), matching the gathered columns."""
        return np.ascontiguousarray(self.weight.transpose(2, 3, 4, 1, 0).reshape(-1, self.cout), dtype=np.float32)


class ConvChain(list):
    """A model's conv layers in order (a list of :class:`ConvLayer`) with ``graphs``: per stage
    (:func:`split_stages`), the serialized ONNX graph that evaluates it on gathered rows."""

    def __init__(self, layers: Iterable[ConvLayer], graphs: Iterable[bytes]):
        super().__init__(layers)
        self.graphs = list(graphs)


def split_stages(layers: list[ConvLayer]) -> list[list[ConvLayer]]:
    """Stages: a gathering convolution followed by the pointwise (1³) layers that run on the same positions."""
    stages: list[list[ConvLayer]] = []
    for i, ly in enumerate(layers):
        if i == 0 or ly.k > 1:
            stages.append([ly])
        else:
            stages[-1].append(ly)
    return stages


def stage_weights(stage: list[ConvLayer]) -> dict[str, np.ndarray]:
    """The stage graph's external initializers: ``W{i}`` (k³·cin, cout) and ``B{i}`` (cout,) of its layer i."""
    out = {}
    for i, ly in enumerate(stage):
        out[f"W{i}"] = ly.matrix()
        out[f"B{i}"] = np.ascontiguousarray(ly.bias, dtype=np.float32)
    return out


def stages_path(model_path: str | Path) -> Path:
    """The side file of a model: ``defmap_5A.onnx`` -> ``defmap_5A.stages.npz`` in the same folder."""
    p = Path(model_path)
    return p.with_name(p.stem + STAGES_SUFFIX)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_chain(model_path: str | Path, layers: list[ConvLayer], graphs: list[bytes]) -> Path:
    """Write the side file of the model at ``model_path`` (training's export calls this; see the module docstring)."""
    if len(graphs) != len(split_stages(layers)):
        raise ValueError(f"{len(graphs)} stage graphs for {len(split_stages(layers))} stages")
    arrays = {"format_version": np.array(STAGES_FORMAT), "model_sha256": np.array(file_sha256(model_path)),
              "activation": np.array([ly.activation or "" for ly in layers]),
              "alpha": np.array([ly.alpha for ly in layers], dtype=np.float64)}
    for i, ly in enumerate(layers):
        arrays[f"weight{i}"] = np.asarray(ly.weight, dtype=np.float32)
        arrays[f"bias{i}"] = np.asarray(ly.bias, dtype=np.float32).reshape(-1)
    for j, g in enumerate(graphs):
        arrays[f"graph{j}"] = np.frombuffer(g, dtype=np.uint8)
    out = stages_path(model_path)
    np.savez(out, **arrays)
    return out


def conv_chain(path: str | Path) -> ConvChain | None:
    """The model at ``path`` as a chain of stride-1, unpadded, cubic 3-D convolutions with pointwise activations,
    read from its side file; None (evaluate with onnxruntime) when there is none, or it belongs to other bytes.

    Any number of input channels (the first layer's cin) and outputs (the last layer's cout)."""
    side = stages_path(path)
    if not side.is_file():
        return None
    try:
        with np.load(side, allow_pickle=False) as z:
            if int(z["format_version"]) != STAGES_FORMAT or str(z["model_sha256"]) != file_sha256(path):
                return None
            acts, alphas = [str(a) for a in z["activation"]], [float(a) for a in z["alpha"]]
            layers = [ConvLayer(z[f"weight{i}"], z[f"bias{i}"], acts[i] or None, alphas[i]) for i in range(len(acts))]
            graphs = [z[f"graph{j}"].tobytes() for j in range(len(split_stages(layers)))]
    except (OSError, KeyError, ValueError, IndexError, EOFError, zipfile.BadZipFile):  # unreadable or not this layout
        return None
    if not layers or not all(_well_formed(ly) for ly in layers) or any(
            b.cin != a.cout for a, b in zip(layers, layers[1:])):
        return None
    return ConvChain(layers, graphs)


def _well_formed(ly: ConvLayer) -> bool:
    w = ly.weight
    return (w.dtype == np.float32 and w.ndim == 5 and len(set(w.shape[2:])) == 1 and ly.bias.shape == (ly.cout,)
            and ly.activation in (None, "LeakyRelu", "Relu"))


class SparseConvNet:
    """A conv chain evaluated only where requested outputs need it (see the module docstring)."""

    def __init__(self, chain: ConvChain, block: int = 64, chunk_bytes: int = 2 << 20, threads: int | None = None):
        self.layers = list(chain)
        self.graphs = chain.graphs
        self.block = int(block)
        self.chunk_bytes = int(chunk_bytes)
        self.threads = threads
        self.flops = 0.0  # multiply-adds x 2 actually executed, summed over calls
        self._rotated: dict[int, SparseConvNet] = {}
        self.extent = 1 + sum(ly.k - 1 for ly in self.layers)  # input patch edge that gives one output voxel
        self.stages = split_stages(self.layers)
        if len(self.graphs) != len(self.stages):
            raise ValueError(f"{len(self.graphs)} stage graphs for a chain of {len(self.stages)} stages")
        self._sessions = [_StageSession(g, st, threads) for g, st in zip(self.graphs, self.stages)]
        self.pipeline = PIPELINE
        self._executor = None

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="defmap-sparse")
        return self._executor

    def rotated(self, k: int) -> SparseConvNet:
        """The network that gives, on unrotated input, what this one gives on patches rotated by ROTATIONS[k]."""
        k %= 24
        if k == 0:
            return self
        if k not in self._rotated:
            inv = inverse_rotation(k)
            layers = [ConvLayer(np.ascontiguousarray(ROTATIONS[inv](ly.weight)), ly.bias, ly.activation, ly.alpha)
                      for ly in self.layers]
            self._rotated[k] = SparseConvNet(ConvChain(layers, self.graphs), self.block, self.chunk_bytes,
                                             self.threads)
        return self._rotated[k]

    @property
    def cin(self) -> int:
        """Input channels the network reads."""
        return self.layers[0].cin

    @property
    def outputs(self) -> int:
        """Values per centre (the last layer's cout)."""
        return self.layers[-1].cout

    def estimate_flops(self, shape, starts_zyx: np.ndarray) -> float:
        """FLOPs :meth:`predict` will execute for these starts (ignoring the small block-halo overlap); ``shape`` is
        the spatial (z, y, x) shape (the last three entries are used, so a (C, z, y, x) shape also works)."""
        m = np.zeros(tuple(shape)[-3:], dtype=bool)
        m[tuple(np.asarray(starts_zyx).T)] = True
        total = 0.0
        for i in range(len(self.stages) - 1, -1, -1):
            total += float(m.sum()) * 2.0 * sum(ly.k ** 3 * ly.cin * ly.cout for ly in self.stages[i])
            if i:
                m = _dilate(m, self.stages[i][0].k)
        return total

    def predict(self, values: np.ndarray, starts_zyx: np.ndarray,
                progress: Callable[[float], None] | None = None) -> np.ndarray:
        """Network output for the patch starting at each (z, y, x) voxel of ``values``, a (z, y, x) map (one channel)
        or a (C, z, y, x) stack; shape (n,) when the network has one output, (n, K) when it has K > 1.
        ``progress`` gets the fraction of starts done after each block."""
        starts = np.asarray(starts_zyx, dtype=np.int64).reshape(-1, 3)
        if values.ndim == 3:
            values = values[None]
        if values.ndim != 4 or values.shape[0] != self.cin:
            raise ValueError(f"input of shape {values.shape}: the network reads {self.cin} channel(s), "
                             "given as (z, y, x) for one or (C, z, y, x)")
        K = self.outputs
        out = np.empty((len(starts), K), dtype=np.float32)
        if len(starts) == 0:
            return out[:, 0] if K == 1 else out
        shape = np.array(values.shape[1:])
        if starts.min() < 0 or np.any(starts + self.extent > shape):
            raise IndexError("a patch would cross the grid edge")
        key = starts // self.block
        order = np.lexsort(key.T[::-1])
        breaks = np.flatnonzero(np.any(np.diff(key[order], axis=0) != 0, axis=1)) + 1
        done = 0
        for grp in np.split(order, breaks):
            t0 = key[grp[0]] * self.block
            t1 = np.minimum(t0 + self.block + self.extent - 1, shape)
            # (z, y, x, C): a voxel's channels side by side, so gathered columns run (dz, dy, dx, cin)
            region = np.ascontiguousarray(values[:, t0[0]:t1[0], t0[1]:t1[1], t0[2]:t1[2]].transpose(1, 2, 3, 0),
                                          dtype=np.float32)
            out[grp] = self._predict_block(region, starts[grp] - t0)
            done += len(grp)
            if progress:
                progress(done / len(starts))
        return out[:, 0] if K == 1 else out

    def _predict_block(self, region: np.ndarray, rel: np.ndarray) -> np.ndarray:
        """(len(rel), K) outputs for starts ``rel`` inside ``region``, a (z, y, x, C) array."""
        shape = region.shape[:3]
        strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
        # needed output positions of every stage, from the last back (all masks share the region's frame)
        masks = [None] * len(self.stages)
        m = np.zeros(shape, dtype=bool)
        m[rel[:, 0], rel[:, 1], rel[:, 2]] = True
        masks[-1] = m
        for i in range(len(self.stages) - 2, -1, -1):
            masks[i] = _dilate(masks[i + 1], self.stages[i + 1][0].k)
        h = region.reshape(-1, region.shape[3])  # stage input rows; the first stage reads the dense region itself
        lookup = None  # region flat index -> row of h (None: identity)
        for stage, sess, mask in zip(self.stages, self._sessions, masks):
            first = stage[0]
            k = first.k
            pos = np.flatnonzero(mask).astype(np.int64)
            dz, dy, dx = np.meshgrid(np.arange(k), np.arange(k), np.arange(k), indexing="ij")
            offs = (dz * strides[0] + dy * strides[1] + dx * strides[2]).reshape(-1)
            kdim = k ** 3 * first.cin
            rows = max(1, self.chunk_bytes // (4 * kdim))
            y = np.empty((len(pos), stage[-1].cout), dtype=np.float32)
            pending = None
            for s in range(0, len(pos), rows):
                idx = pos[s:s + rows, None] + offs[None, :]
                if lookup is not None:
                    idx = lookup[idx]
                # (n, k³·cin) in (dz, dy, dx, cin) order; np.take is ~4x faster than h[idx] here (measured)
                cols = np.take(h, idx, axis=0).reshape(len(idx), kdim)
                if self.pipeline:  # onnxruntime drops the GIL: the next gather overlaps this product
                    if pending is not None:
                        pending.result()
                    pending = self._pool().submit(sess.run_into, cols, y, s)
                else:
                    sess.run_into(cols, y, s)
            if pending is not None:
                pending.result()
            self.flops += 2.0 * len(pos) * sum(ly.k ** 3 * ly.cin * ly.cout for ly in stage)
            h = y
            lookup = np.full(mask.size, -1, dtype=np.int64)
            lookup[pos] = np.arange(len(pos))
        return h[lookup[rel @ strides]]


class _StageSession:
    """One stage's onnxruntime session, given the stage's weights as external initializers.  onnxruntime reads
    their memory rather than copying it, so the arrays live as long as the session."""

    def __init__(self, graph: bytes, stage: list[ConvLayer], threads: int | None):
        import os

        import onnxruntime as ort
        self.weights = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in stage_weights(stage).items()}
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or os.cpu_count() or 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0" if _NO_SPIN else "1")
        so.add_external_initializers(list(self.weights), list(self.weights.values()))
        self.session = ort.InferenceSession(graph, sess_options=so, providers=["CPUExecutionProvider"])

    def run_into(self, cols: np.ndarray, y: np.ndarray, s: int) -> None:
        y[s:s + len(cols)] = self.session.run(None, {"x": cols})[0]


def chain_flops(layers: Iterable[ConvLayer], input_shape) -> float:
    """FLOPs (2 x multiply-adds) of a dense valid evaluation of the chain on an input of this (z, y, x) shape."""
    total, n = 0.0, np.array(input_shape, dtype=np.int64)
    for ly in layers:
        n = n - ly.k + 1
        if np.any(n <= 0):
            break
        total += 2.0 * ly.k ** 3 * ly.cin * ly.cout * float(np.prod(n))
    return total


def _dilate(m: np.ndarray, k: int) -> np.ndarray:
    """out[q] = any(m[q - o]) for o in [0, k)³: the inputs a valid k³ convolution reads for the outputs in m."""
    out = m.copy()
    for ax in range(3):
        cur = out.copy()
        n = out.shape[ax]
        for o in range(1, k):
            if o >= n:
                break
            dst = [slice(None)] * 3
            src = [slice(None)] * 3
            dst[ax], src[ax] = slice(o, n), slice(0, n - o)
            out[tuple(dst)] |= cur[tuple(src)]
    return out
