"""Per-residue means of per-atom values, over all heavy atoms or the subset ``residueAtoms`` names."""

from __future__ import annotations

import numpy as np


def residue_means(atoms, values):
    """Mean of each residue's heavy-atom values, vectorized over the atoms' residue indices."""
    residues = atoms.unique_residues
    idx = residues.indices(atoms.residues)
    sums = np.bincount(idx, weights=values, minlength=len(residues))
    counts = np.bincount(idx, minlength=len(residues))
    return residues, sums / np.maximum(counts, 1)


RESIDUE_ATOMS = ("ca", "backbone", "heavy")  # residueAtoms: which atoms' values a residue value averages


def residue_subset_means(atoms, values, residues, heavy_means, which: str) -> np.ndarray:
    """Residue values from the C-alpha only or the backbone (N, CA, C, O) instead of all heavy atoms; residues without
    such atoms keep their heavy-atom mean (``heavy_means``, in the order of ``residues``)."""
    if which not in RESIDUE_ATOMS:
        raise ValueError(f"residueAtoms must be one of {', '.join(RESIDUE_ATOMS)}, not {which!r}")
    out = np.array(heavy_means, dtype=np.float64)
    if which == "heavy":
        return out
    sel = np.isin(atoms.names, ("CA",) if which == "ca" else ("N", "CA", "C", "O"))
    if sel.any():
        sub_res, sub_vals = residue_means(atoms.filter(sel), np.asarray(values)[sel])
        idx = residues.indices(sub_res)
        out[idx[idx >= 0]] = sub_vals[idx >= 0]
    return out
