"""Per-residue means of per-atom values, over all heavy atoms or the subset ``residueAtoms`` names.

The array functions group atoms by an integer residue position (no ChimeraX objects), so the prediction recipe and
training share them; :func:`residue_means` and :func:`residue_subset_means` are the same on ChimeraX atoms.
"""

from __future__ import annotations

import numpy as np

RESIDUE_ATOMS = ("ca", "backbone", "heavy")  # residueAtoms: which atoms' values a residue value averages
SUBSET_NAMES = {"ca": ("CA",), "backbone": ("N", "CA", "C", "O")}


def group_in_order(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct ids in order of first appearance, position of each entry's id among them): the order ChimeraX's
    ``Atoms.unique_residues`` gives, so both paths list residues alike."""
    ids = np.asarray(ids).reshape(-1)
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[inverse.reshape(-1)]


def group_means(group: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Mean of the values in each of ``n`` groups (``group``: 0..n-1 per entry); 0 for an empty group."""
    sums = np.bincount(group, weights=values, minlength=n)
    counts = np.bincount(group, minlength=n)
    return sums / np.maximum(counts, 1)


def subset_means(group: np.ndarray, values: np.ndarray, names: np.ndarray, heavy_means: np.ndarray,
                 which: str) -> np.ndarray:
    """Residue values from the C-alpha only or the backbone (N, CA, C, O) instead of all heavy atoms; residues without
    such atoms keep their heavy-atom mean (``heavy_means``, one per group)."""
    if which not in RESIDUE_ATOMS:
        raise ValueError(f"residueAtoms must be one of {', '.join(RESIDUE_ATOMS)}, not {which!r}")
    out = np.array(heavy_means, dtype=np.float64)
    if which == "heavy":
        return out
    sel = np.isin(names, SUBSET_NAMES[which])
    if sel.any():
        g, v = np.asarray(group)[sel], np.asarray(values)[sel]
        sums = np.bincount(g, weights=v, minlength=len(out))
        counts = np.bincount(g, minlength=len(out))
        has = counts > 0
        out[has] = sums[has] / counts[has]
    return out


def reported_means(group: np.ndarray, values: np.ndarray, names: np.ndarray, n: int, which: str) -> np.ndarray:
    """The residue values structure mode reports for per-atom values: means over the ``residueAtoms`` subset."""
    return subset_means(group, values, names, group_means(group, values, n), which)


def residue_means(atoms, values):
    """(atoms.unique_residues, mean of each residue's values) for ChimeraX atoms."""
    residues = atoms.unique_residues
    return residues, group_means(residues.indices(atoms.residues), values, len(residues))


def residue_subset_means(atoms, values, residues, heavy_means, which: str) -> np.ndarray:
    """:func:`subset_means` for ChimeraX atoms grouped by ``residues`` (atoms of other residues are left out)."""
    idx = residues.indices(atoms.residues)
    keep = idx >= 0
    return subset_means(idx[keep], np.asarray(values)[keep], atoms.names[keep], heavy_means, which)
