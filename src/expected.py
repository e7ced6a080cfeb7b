"""How far to trust a run: the Pearson r with MD that this run can expect (``expected_r``), with a 68 % range.

A run cannot see MD, but it measures things that go with how well the prediction tracks it: whether the network's
ranking agrees with the map's own intensity and with the structure's packing (two independent weak predictors
that, where they agree with it, vouch for it), how widely the network's values spread (a network that tells
residues apart strongly tends to be right), the map's resolution and the structure's size.  (How well the model
explains the map, how many atoms fall outside it and, in voxel mode, how far the contour stands out of the
background were tried and dropped: on the engine maps the fit is made on they carried no weight.)  A linear model
of Fisher z(r) on those run features, one per mode, is fitted by ``defmap-train expected-r`` on engine maps of the
atlas_train chains with their ATLAS MD (never md_reference) and shipped as ``onnx_models/prior/expected_r.json``;
the range is ± the fit's protein-disjoint CV residual SD in z.  validate-md checks it on both map families.

Free of ChimeraX imports: ``recipe`` computes the features and the estimate, training fits the model on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import structure_prior
from .combination import zscore

PATH = Path(__file__).resolve().parent / "onnx_models" / "prior" / "expected_r.json"
FEATURES = {
    "structure": ("agree_raw", "agree_packing", "spread", "resolution", "log_residues"),
    "voxel": ("agree_packing", "spread", "resolution", "log_voxels"),
}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over the entries finite in both (0 when fewer than 3 or one is constant: no agreement shown)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return 0.0
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def structure_features(network: np.ndarray, map_at: np.ndarray, packing: np.ndarray,
                       resolution: float) -> dict[str, float]:
    """Structure mode's run features from per-residue arrays in one order: the network's values, the map's own
    values at the residue's atoms, heavy atoms within 12 Å of its C-alpha (NaN without one); the map's resolution
    (Å); ``spread``: the SD of the network's values (its units), how strongly it tells residues apart."""
    network = np.asarray(network, dtype=np.float64)
    return {"agree_raw": pearson(network, -np.asarray(map_at)), "agree_packing": pearson(network, -np.asarray(packing)),
            "spread": float(np.nanstd(network)) if np.isfinite(network).any() else 0.0,
            "resolution": float(resolution), "log_residues": float(np.log(max(np.isfinite(network).sum(), 1)))}


def voxel_features(network: np.ndarray, packing: np.ndarray | None, resolution: float) -> dict[str, float]:
    """Voxel mode's run features: the network's values at the scored voxels, the contour's packing there (None: not
    computed, no agreement shown), the map's resolution (Å); ``spread`` as for structure mode."""
    network = np.asarray(network, dtype=np.float64)
    return {"agree_packing": pearson(network, packing) if packing is not None else 0.0,
            "spread": float(network.std()) if len(network) else 0.0,
            "resolution": float(resolution), "log_voxels": float(np.log(max(len(network), 1)))}


def residue_packing(ca_xyz: np.ndarray, ca_residue: np.ndarray, heavy_xyz: np.ndarray,
                    residue_ids: np.ndarray) -> np.ndarray:
    """log(1 + heavy atoms within 12 Å) of each residue's C-alpha, in ``residue_ids`` order (NaN: no C-alpha)."""
    out = np.full(len(residue_ids), np.nan)
    ca, heavy = np.asarray(ca_xyz, dtype=np.float64), np.asarray(heavy_xyz, dtype=np.float64)
    ok = np.isfinite(ca).all(axis=1)
    if ok.sum() == 0:
        return out
    heavy = heavy[np.isfinite(heavy).all(axis=1)]
    count = structure_prior.packing_counts(ca[ok], heavy, 12.0)
    where = {int(r): i for i, r in enumerate(np.asarray(residue_ids))}
    for r, c in zip(np.asarray(ca_residue)[ok], count):
        i = where.get(int(r))
        if i is not None:
            out[i] = c
    return out


R_FLOOR, R_CEIL = 0.2, 0.98  # error_factor's r is held here: near 0 or 1 the factor runs off to infinity or 0


def error_factor(r: float) -> float:
    """How widely MD scatters about its least-squares line on a prediction that correlates with it at Pearson r, in
    units of the prediction's own SD: sqrt(1 - r^2) / r.  The SD of a run is this at the run's expected r times the
    spread of its values (``network.calibrated_sd``'s run factor), so a run expected to track MD less closely reports
    wider error bars on every residue."""
    r = float(np.clip(r, R_FLOOR, R_CEIL))
    return float(np.sqrt(1.0 - r * r) / r)


def packing_disagreement(values: np.ndarray, packing: np.ndarray) -> np.ndarray:
    """Per residue |z(value) - z(-packing)|: how far the prediction's ranking departs from the model's packing
    (``residue_packing``), where one of the two is wrong more often (0 where either is missing)."""
    v, k = np.asarray(values, dtype=np.float64), -np.asarray(packing, dtype=np.float64)
    ok = np.isfinite(v) & np.isfinite(k)
    out = np.zeros(len(v))
    if ok.sum() > 2 and v[ok].std() > 0 and k[ok].std() > 0:
        out[ok] = np.abs(zscore(v[ok]) - zscore(k[ok]))
    return out


@dataclass
class Expected:
    """The r with MD a run can expect, its 68 % range, and the features it came from."""

    r: float
    low: float
    high: float
    features: dict

    def line(self) -> str:
        return f"r ≈ {self.r:.2f} ({self.low:.2f}–{self.high:.2f})"


@dataclass
class Model:
    """One mode's fitted model: z(r) = intercept + ((x - mean) / scale) @ coef, x clamped to the fitting range."""

    features: tuple
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    resid_sd: float
    low: np.ndarray
    high: np.ndarray

    def predict(self, features: dict) -> Expected:
        x = np.clip(np.array([features[k] for k in self.features], dtype=np.float64), self.low, self.high)
        z = self.intercept + ((x - self.mean) / self.scale) @ self.coef
        return Expected(float(np.tanh(z)), float(np.tanh(z - self.resid_sd)), float(np.tanh(z + self.resid_sd)),
                        dict(features))


def model_from_dict(d: dict) -> Model:
    arr = {k: np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "coef", "low", "high")}
    return Model(features=tuple(d["features"]), intercept=float(d["intercept"]), resid_sd=float(d["resid_sd"]), **arr)


_LOADED: dict[Path, dict[str, Model]] = {}


def load(path: Path | None = None) -> dict[str, Model] | None:
    """mode -> fitted model from ``path`` (default: the shipped file), None when absent; a mode fitted on other
    features than this bundle computes is left out (no estimate rather than a wrong one)."""
    p = structure_prior.prior_file(PATH, path)
    if p is not None and p not in _LOADED:
        d = json.loads(p.read_text(encoding="utf-8"))
        _LOADED[p] = {mode: model_from_dict(m) for mode, m in d["modes"].items()
                      if tuple(m["features"]) == FEATURES.get(mode)}
    return None if p is None else _LOADED[p]


def expected(mode: str, features: dict) -> Expected | None:
    """The shipped estimate for a run of ``mode`` ("structure" or "voxel"), None without the file."""
    models = load()
    if models is None or mode not in models:
        return None
    return models[mode].predict(features)
