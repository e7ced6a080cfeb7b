"""The atlas_train chains (``../shared/data/atlas_train``): a public structure of each of 66 proteins and ATLAS's MD
C-alpha RMSF (CHARMM36m, 300 K, 3 x 100 ns) at its residues.  The training and calibration set for real-MD labels;
protein-disjoint from md_reference and from every chain held back for validation (its README says how)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .ensembles import _record
from .paths import SHARED
from .structure import Structure, load_structure

ATLAS_TRAIN = SHARED / "atlas_train"
# ATLAS chains that share one structure chain: always in the same fold (README, "Summary")
SAME_STRUCTURE = (("3se9_G", "3tgt_A"), ("2h2z_A", "7buy_A"), ("2rjw_A", "1yu5_X"))


def chains(root: Path = ATLAS_TRAIN) -> list[str]:
    return sorted(p.name for p in Path(root).iterdir() if (p / "rmsf.tsv").is_file())


def load_chain(name: str, root: Path = ATLAS_TRAIN) -> tuple[Structure, np.ndarray]:
    """(structure, MD C-alpha RMSF in Å per structure residue; NaN where ATLAS has no row for it)."""
    d = Path(root) / name
    st = load_structure(d / "structure.pdb", name)
    rows = [line.split("\t") for line in (d / "rmsf.tsv").read_text().splitlines()[1:] if line.strip()]
    by_label = {f"{r[0]}:{r[1]}{r[2]}": float(r[5]) * 10.0 for r in rows}
    rmsf = np.array([by_label.get(label, np.nan) for label in st.res_label])
    if np.isfinite(rmsf).sum() < 0.9 * len(rows):
        raise ValueError(f"{name}: only {np.isfinite(rmsf).sum()} of {len(rows)} RMSF rows match residues")
    return st, rmsf


def chain_record(name: str, root: Path = ATLAS_TRAIN) -> dict:
    """The chain as an ensemble record: per atom the MD RMSF of its residue (``rmsf``; residues ATLAS lacks get the
    chain's median, so they blur the map like their neighbours) and ``label_rmsf``, NaN where ATLAS lacks the residue
    (no label: training and evaluation skip it)."""
    st, rmsf = load_chain(name, root)
    rec = _record(st, np.where(np.isfinite(rmsf), rmsf, np.nanmedian(rmsf))[st.res_index], None, "atlas_md")
    rec["label_rmsf"] = rmsf[st.res_index].astype(np.float32)
    return rec


def folds(names: list[str], k: int, seed: int = 0) -> dict[str, int]:
    """Protein-disjoint folds: chains sharing a structure chain go together."""
    unit = {n: n for n in names}
    for a, b in SAME_STRUCTURE:
        if a in unit and b in unit:
            unit[b] = a
    units = sorted(set(unit.values()))
    order = np.random.default_rng(seed).permutation(len(units))
    fold_of = {units[i]: j % k for j, i in enumerate(order)}
    return {n: fold_of[unit[n]] for n in names}
