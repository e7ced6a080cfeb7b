"""The md_reference chains (``../shared/data/md_reference``): structures, per-residue MD RMSF and MD frames.

The validation set: nothing is fitted on it.  Both map families (the engine's, ``validate_md``, and image formation,
``image_formation``) read their chains here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .paths import SHARED
from .structure import Structure, load_structure

MD_DIR = SHARED / "md_reference"
ATLAS = {"1ab1_A", "1ail_A", "1bgf_A", "1b8d_K", "1ah7_A"}  # ATLAS 300 K; the other 12 are mdCATH 320 K


def md_chains(md_dir: Path = MD_DIR) -> list[str]:
    return sorted(p.name.split(".")[0] for p in Path(md_dir).glob("*.rmsf_nm.txt"))


def load_chain(md_dir: Path, name: str) -> tuple[Structure, np.ndarray]:
    """(structure, per-residue MD C-alpha RMSF in Å)."""
    st = load_structure(Path(md_dir) / f"{name}.pdb", name)
    txt = (Path(md_dir) / f"{name}.rmsf_nm.txt").read_text().replace("\n", ",")
    md = np.array([float(x) for x in txt.split(",") if x.strip()]) * 10.0
    if len(md) != st.n_res:
        raise ValueError(f"{name}: {len(md)} RMSF values but {st.n_res} residues")
    return st, md


def frame_displacements(st: Structure, frames_dir: Path) -> np.ndarray | None:
    """(F, N, 3) displacements of the structure's atoms in each MD frame, matched by (residue order, atom name); atoms
    a frame lacks (five chains keep one point per residue) move with their residue's matched atoms."""
    files = sorted(Path(frames_dir).glob("*.pdb")) if Path(frames_dir).is_dir() else []
    if not files:
        return None
    out = []
    for f in files:
        fr = load_structure(f)
        if fr.n_res != st.n_res:
            raise ValueError(f"{f.name}: {fr.n_res} residues, {st.name} has {st.n_res}")
        pos = {(int(r), str(a)): x for r, a, x in zip(fr.res_index, fr.atom_name, fr.xyz)}
        disp = np.full(st.xyz.shape, np.nan)
        for i, (r, a) in enumerate(zip(st.res_index, st.atom_name)):
            x = pos.get((int(r), str(a)))
            if x is not None:
                disp[i] = x - st.xyz[i]
        # residues whose atoms are missing in the frame: the residue's one real point (N, or CAY of a cap)
        for r in range(st.n_res):
            sel = st.res_index == r
            have = np.isfinite(disp[sel, 0])
            if have.all():
                continue
            if have.any():
                fill = disp[sel][have].mean(axis=0)
            else:
                pts = fr.xyz[fr.res_index == r]
                ref = st.xyz[sel]
                fill = pts.mean(axis=0) - ref[np.isin(st.atom_name[sel], ["N", "CAY"])].mean(axis=0) \
                    if np.isin(st.atom_name[sel], ["N", "CAY"]).any() else pts.mean(axis=0) - ref.mean(axis=0)
            d = disp[sel]
            d[~have] = fill
            disp[sel] = d
        out.append(disp)
    return np.stack(out)
