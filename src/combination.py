"""How structure and voxel mode combine the network's prediction with other per-residue or per-voxel terms (density
contrasts, packing, normal modes): a weighted sum of z-scores rescaled to the prediction's own mean and SD."""

from __future__ import annotations

import numpy as np


def zscore(v: np.ndarray) -> np.ndarray:
    """Per-structure z-score, DEFMap's "normalize" step (NaN ignored; zeros when values do not vary)."""
    v = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(v)
    sd = np.std(v[ok]) if ok.sum() > 1 else 0.0
    return (v - np.mean(v[ok])) / sd if sd > 0 else np.zeros_like(v)


def combine(map_values: np.ndarray, nma_values: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """z(map) + weight x z(ANM) (weight 1 unless a model's metadata carries one, fitted on a training CV), rescaled
    to the map prediction's mean and SD so the result reads as a (relative) log10 RMSF like the map prediction alone.
    Entries without a normal-mode value keep the map value.  Structure mode also uses it for the density contrasts
    (``recipe.predict_atoms``, through :func:`combine_terms`).
    """
    return combine_terms(map_values, [(nma_values, weight)])


def combine_terms(map_values: np.ndarray, terms) -> np.ndarray:
    """z(map) + sum of weight x z(term) over (term, weight) pairs with a non-zero weight, rescaled to the map
    prediction's mean and SD; entries where a term has no value keep the map value."""
    m = np.asarray(map_values, dtype=np.float64)
    terms = [(np.asarray(t, dtype=np.float64), float(w)) for t, w in terms if float(w) != 0.0]
    ok = np.isfinite(m)
    for t, _ in terms:
        ok &= np.isfinite(t)
    out = m.copy()
    if ok.sum() < 2 or not terms:
        return out
    s = zscore(m[ok]) + sum(w * zscore(t[ok]) for t, w in terms)
    out[ok] = np.mean(m[ok]) + np.std(m[ok]) * zscore(s)
    return out
