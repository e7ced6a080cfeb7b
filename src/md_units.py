"""Values in MD units: structure mode's reported value as log10 C-alpha RMSF (Å) of a 300 K MD of the chain alone.

The networks rank residues well but their scale is that of their training labels (an ensemble engine, not MD), and a
map standardized before it reaches them cannot say how much a protein moves overall.  So the reported value is
built from two parts fitted on ATLAS MD of the 66 atlas_train chains (CHARMM36m, 300 K, 3 x 100 ns; ``defmap-train
md-units``, never on md_reference): the structure's mean log10 RMSF from its packing (``level_features``: heavy atoms
around each C-alpha, weighted contact number, loop fraction, size, and C-alpha atoms in the half sphere facing away
from each side chain, HSE-down; a ridge fit), and how far the residues spread around it per unit of the
prediction's within-structure z-score (``spread``, fitted on engine maps of those chains for each model kind).
Within a structure this is an increasing linear map of the prediction, so every correlation, ranking and
``defmap_z`` is unchanged; only the scale is MD's.  The SD is carried through the same map and its factor fitted
for 68 % coverage on the same maps.

Free of ChimeraX imports: ``recipe.predict_atoms`` applies it, training fits it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import structure_prior

MD = "ATLAS MD of the chain alone (CHARMM36m, 300 K, 3 × 100 ns)"
LEVEL_FEATURES = ("heavy12", "wcn", "loop", "log_residues", "hse_down")
SCALE_PATH = Path(__file__).resolve().parent / "onnx_models" / "prior" / "md_units.json"


def level_features(ca: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """The structure's means of ``LEVEL_FEATURES`` (C-alpha atoms in chain order, all heavy atoms; atoms without
    finite coordinates are left out, as the map left them unscored)."""
    ca, heavy = np.asarray(ca, dtype=np.float64), np.asarray(heavy, dtype=np.float64)
    ca, heavy = ca[np.isfinite(ca).all(axis=1)], heavy[np.isfinite(heavy).all(axis=1)]
    seg = structure_prior.segments(ca)
    f = structure_prior.packing(ca, heavy)
    f.update(structure_prior.secondary(ca, seg))
    f["hse_down"] = structure_prior.half_sphere(ca, seg)[1]
    f["log_residues"] = np.full(len(ca), np.log(max(len(ca), 1)))
    return np.array([float(np.nanmean(f[k])) for k in LEVEL_FEATURES])


@dataclass
class Scale:
    """The fitted calibration (``md_units.json``): the level's ridge model and, per model kind, spread and SD factor."""

    mean: np.ndarray  # feature means on atlas_train
    scale: np.ndarray  # feature SDs on atlas_train
    coef: np.ndarray
    intercept: float
    low: np.ndarray  # feature range on atlas_train: a structure outside it is clamped to it
    high: np.ndarray
    spread: dict  # model kind ("map+model", "map") -> log10 units per unit z of the prediction
    sd_factor: dict  # model kind -> factor on the SD after the spread
    meta: dict

    def level(self, features: np.ndarray) -> tuple[float, bool]:
        """(mean log10 RMSF the structure's features predict, whether a feature lay outside atlas_train's range)."""
        clamped = np.clip(features, self.low, self.high)
        return (float(self.intercept + ((clamped - self.mean) / self.scale) @ self.coef),
                bool(np.any(clamped != features)))


def scale_from_dict(d: dict) -> Scale:
    lv = d["level"]
    if list(lv["features"]) != list(LEVEL_FEATURES):
        raise ValueError("md_units.json was fitted on other level features than this bundle computes")
    arr = {k: np.asarray(lv[k], dtype=np.float64) for k in ("mean", "scale", "coef", "low", "high")}
    return Scale(intercept=float(lv["intercept"]), spread=dict(d["spread"]), sd_factor=dict(d["sd_factor"]),
                 meta={k: v for k, v in d.items() if k not in ("level", "spread", "sd_factor")}, **arr)


_LOADED: dict[Path, Scale] = {}


def load_scale(path: Path | None = None) -> Scale | None:
    """The calibration at ``path`` (default: the shipped one, ``structure_prior.prior_file``), None when absent."""
    p = structure_prior.prior_file(SCALE_PATH, path)
    if p is not None and p not in _LOADED:
        _LOADED[p] = scale_from_dict(json.loads(p.read_text(encoding="utf-8")))
    return None if p is None else _LOADED[p]


@dataclass
class Affine:
    """value_md = level + spread x (value - centre) / width, the same for atoms, residues and (without the shift) the
    SD; ``clamped``: the structure lay outside the calibration's range, so its level is extrapolated."""

    level: float
    spread: float
    centre: float
    width: float
    sd_factor: float
    clamped: bool = False

    def values(self, v: np.ndarray) -> np.ndarray:
        return self.level + self.spread * (np.asarray(v, dtype=np.float64) - self.centre) / self.width

    def sd(self, s: np.ndarray) -> np.ndarray:
        return np.asarray(s, dtype=np.float64) * self.sd_factor * self.spread / self.width


def affine(scale: Scale, kind: str, residue_values: np.ndarray, ca: np.ndarray, heavy: np.ndarray) -> Affine | None:
    """The map for this structure's residue values (None when the kind is not calibrated, or too few residues or
    C-alpha atoms to take a spread from)."""
    v = np.asarray(residue_values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if kind not in scale.spread or len(v) < 3 or np.isfinite(ca).all(axis=1).sum() < 3 or v.std() == 0:
        return None
    level, clamped = scale.level(level_features(ca, heavy))
    return Affine(level, float(scale.spread[kind]), float(v.mean()), float(v.std()),
                  float(scale.sd_factor.get(kind, 1.0)), clamped)
