"""A structure prior learned from molecular dynamics: each residue's relative log10 C-alpha RMSF from the fitted model
alone, for ``normalModes true`` (the recipe's ``normal_mode_values``).

Plain ANM says how the elastic network lets a residue move; MD also moves exposed, loosely packed residues and chain
ends more than ANM says. The prior is a linear model over per-residue features that scale to large complexes (ANM,
weighted contact number, heavy atoms around the C-alpha, half-sphere exposure, distance to a chain end or gap, the
C-alpha's distance from the centre, local helix/strand geometry and sequence windows of them), each z-scored over the
structure, fitted by ``defmap-train prior`` to ATLAS MD of 66 chains (``../shared/data/atlas_train``) and shipped as
``onnx_models/prior/structure_prior.onnx``, run with onnxruntime like the networks. Its output is scale-free (a
within-structure z-score of log10 RMSF): the recipe combines it by z-score like ANM. Without the file, plain ANM.

Free of ChimeraX imports: training fits on the same features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from . import nma
from .combination import zscore

GAP = 4.2  # Å: consecutive C-alpha atoms farther apart than this start a new segment (a chain end or a gap)
WINDOW = 3  # residues each side for the sequence windows
HSE_RADIUS = 13.0  # Å, half-sphere exposure (Hamelryck 2005)
WCN_RADIUS = 30.0  # Å, weighted contact number sum (1/r² beyond it adds < 2 % for a compact protein)
HEAVY_RADII = (8.0, 12.0, 16.0)  # Å, heavy atoms around each C-alpha
WINDOWED = ("anm", "wcn", "heavy8", "heavy12", "heavy16", "hse_up", "hse_down")
BASE = ("anm", "wcn", "heavy8", "heavy12", "heavy16", "end", "centre", "hse_up", "hse_down", "helix", "strand",
        "loop")
FEATURES = BASE + tuple(f"{k}_window" for k in WINDOWED)
METADATA_KEY = "defmap_prior"
PRIOR_PATH = Path(__file__).resolve().parent / "onnx_models" / "prior" / "structure_prior.onnx"


def zscore_finite(x: np.ndarray) -> np.ndarray:
    """``combination.zscore`` with NaN (a feature a residue lacks) as 0, the mean, so it contributes nothing."""
    return np.nan_to_num(zscore(x), nan=0.0)


def segments(ca: np.ndarray) -> np.ndarray:
    """Segment number per C-alpha, in the given (chain) order: a new one after each gap or chain break."""
    step = np.linalg.norm(np.diff(ca, axis=0), axis=1) if len(ca) > 1 else np.zeros(0)
    return np.cumsum(np.r_[True, step > GAP])


def _windowed(x: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Mean over ±WINDOW residues within each segment."""
    out = np.empty_like(x)
    for s in np.unique(seg):
        idx = np.flatnonzero(seg == s)
        c = np.r_[0.0, np.cumsum(x[idx])]
        i = np.arange(len(idx))
        lo, hi = np.maximum(i - WINDOW, 0), np.minimum(i + WINDOW + 1, len(idx))
        out[idx] = (c[hi] - c[lo]) / (hi - lo)
    return out


def _local(ca: np.ndarray, seg: np.ndarray, k: int) -> np.ndarray:
    """C-alpha(i) to C-alpha(i+k) distance within a segment (NaN where i+k leaves it)."""
    d = np.full(len(ca), np.nan)
    if len(ca) > k:
        same = seg[k:] == seg[:-k]
        d[:-k] = np.where(same, np.linalg.norm(ca[k:] - ca[:-k], axis=1), np.nan)
    return d


def raw_features(ca: np.ndarray, heavy: np.ndarray) -> dict[str, np.ndarray]:
    """The base features per C-alpha (before z-scoring): C-alpha coordinates in chain order, all heavy atoms of the
    structure.  Neighbour searches use k-d trees, so a complex of 20,000 residues takes seconds."""
    ca, heavy = np.asarray(ca, dtype=np.float64), np.asarray(heavy, dtype=np.float64)
    n = len(ca)
    seg = segments(ca)
    f: dict[str, np.ndarray] = {"anm": nma.anm_log_fluctuations(ca), **packing(ca, heavy)}
    pos = np.zeros(n)
    for s in np.unique(seg):
        idx = np.flatnonzero(seg == s)
        pos[idx] = np.minimum(np.arange(len(idx)), np.arange(len(idx))[::-1])
    f["end"] = np.log1p(pos)
    centre = ca.mean(axis=0)
    rg = np.sqrt(((ca - centre) ** 2).sum(axis=1).mean()) if n else 1.0
    f["centre"] = np.linalg.norm(ca - centre, axis=1) / max(rg, 1e-6)
    f["hse_up"], f["hse_down"] = half_sphere(ca, seg)
    f.update(secondary(ca, seg))
    for k in WINDOWED:
        f[f"{k}_window"] = _windowed(zscore_finite(f[k]), seg)
    return f


def packing(ca: np.ndarray, heavy: np.ndarray) -> dict[str, np.ndarray]:
    """Per C-alpha: log weighted contact number of the C-alpha atoms (``wcn``) and log(1 + heavy atoms within each
    of ``HEAVY_RADII``) (k-d trees: no ANM, seconds for a large complex)."""
    n = len(ca)
    pairs = cKDTree(ca).query_pairs(WCN_RADIUS, output_type="ndarray").reshape(-1, 2)
    d2 = ((ca[pairs[:, 0]] - ca[pairs[:, 1]]) ** 2).sum(axis=1)
    inv = 1.0 / np.maximum(d2, 1e-6)
    f = {"wcn": np.log(np.bincount(pairs[:, 0], inv, n) + np.bincount(pairs[:, 1], inv, n) + 1e-6)}
    heavy_tree = cKDTree(heavy)
    for r in HEAVY_RADII:
        f[f"heavy{int(r)}"] = packing_counts(ca, heavy_tree, r)
    return f


def packing_counts(ca: np.ndarray, heavy, radius: float) -> np.ndarray:
    """log(1 + heavy atoms within ``radius`` of each C-alpha); ``heavy``: their coordinates or a k-d tree of them."""
    tree = heavy if isinstance(heavy, cKDTree) else cKDTree(np.asarray(heavy, dtype=np.float64))
    return np.log1p(tree.query_ball_point(ca, radius, return_length=True).astype(np.float64))


def secondary(ca: np.ndarray, seg: np.ndarray) -> dict[str, np.ndarray]:
    """Helix, strand and loop (0/1 per C-alpha) from C-alpha(i)-C-alpha(i+3) and (i+4) distances."""
    d3, d4 = _local(ca, seg, 3), _local(ca, seg, 4)
    helix = ((d3 > 4.5) & (d3 < 5.7)).astype(np.float64)  # NaN compares False: no helix at a segment end
    strand = (d4 > 12.0).astype(np.float64)
    return {"helix": helix, "strand": strand, "loop": 1.0 - np.clip(helix + strand, 0.0, 1.0)}


def half_sphere(ca: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log(1 + C-alpha count) in the half sphere the side chain points into (up) and the other (down), the side-chain
    direction approximated from the neighbouring C-alpha atoms."""
    n = len(ca)
    v = np.zeros_like(ca)
    if n > 2:
        v[1:-1] = (ca[1:-1] - ca[:-2]) + (ca[1:-1] - ca[2:])
        inner = np.r_[False, (seg[1:-1] == seg[:-2]) & (seg[1:-1] == seg[2:]), False]
        v[~inner] = 0.0
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-9
    pairs = cKDTree(ca).query_pairs(HSE_RADIUS, output_type="ndarray").reshape(-1, 2)
    i, j = pairs[:, 0], pairs[:, 1]
    d = ca[j] - ca[i]
    up_i = np.einsum("pk,pk->p", d, v[i]) > 0
    up_j = np.einsum("pk,pk->p", -d, v[j]) > 0
    up = np.bincount(i, up_i, n) + np.bincount(j, up_j, n)
    total = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
    return np.log1p(up), np.log1p(total - up)


def feature_matrix(raw: dict[str, np.ndarray]) -> np.ndarray:
    """(C-alpha atoms, len(FEATURES)) float64: ``raw_features`` z-scored, in the order the prior was fitted on."""
    return np.stack([zscore_finite(raw[k]) for k in FEATURES], axis=1)


def features(ca: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """The prior's input (float32) for these C-alpha and heavy atoms."""
    return feature_matrix(raw_features(ca, heavy)).astype(np.float32)


@dataclass
class Prior:
    """A shipped (or user) prior: its ONNX file and metadata (features in order, what it was fitted on)."""

    path: Path
    meta: dict
    session: object  # its onnxruntime session (load_prior makes it)

    def values(self, ca: np.ndarray, heavy: np.ndarray) -> np.ndarray:
        """Relative log10 RMSF per C-alpha (scale-free)."""
        if list(self.meta.get("features", [])) != list(FEATURES):
            raise ValueError(f"{self.path.name} was fitted on other features than this bundle computes")
        name = self.session.get_inputs()[0].name
        return self.session.run(None, {name: features(ca, heavy)})[0].reshape(-1).astype(np.float64)


_LOADED: dict[Path, Prior] = {}


def prior_file(shipped: Path, path: Path | None = None) -> Path | None:
    """``path`` if given, else the bundle's ``shipped`` file in onnx_models/prior or, in a development install, the
    checkout's copy; None when the file is not there."""
    candidates = [Path(path)] if path else [shipped, shipped.parents[3] / "onnx_models" / "prior" / shipped.name]
    return next((p for p in candidates if p.is_file()), None)


def load_prior(path: Path | None = None) -> Prior | None:
    """The prior at ``path`` (default: the shipped one, ``prior_file``), None when absent."""
    p = prior_file(PRIOR_PATH, path)
    if p is not None and p not in _LOADED:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.intra_op_num_threads = so.inter_op_num_threads = 1  # a (residues x 19) matrix product
        sess = ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"])
        meta = json.loads(sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "{}"))
        _LOADED[p] = Prior(p, meta, sess)
    return None if p is None else _LOADED[p]


def prior_values(ca: np.ndarray, heavy: np.ndarray | None) -> tuple[np.ndarray, str]:
    """(relative log10 fluctuation per C-alpha, what produced it): the learned prior when it is installed and the
    heavy atoms are given, else ANM of the C-alpha atoms."""
    prior = load_prior() if heavy is not None and len(heavy) else None
    if prior is not None:
        return prior.values(ca, heavy), "learned prior"
    return nma.anm_log_fluctuations(ca), "ANM"
