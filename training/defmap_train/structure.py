"""Protein heavy atoms from PDB/mmCIF (gemmi): the one place that turns a coordinate file into arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHARMM_NAMES = {"HSD": "HIS", "HSE": "HIS", "HSP": "HIS"}  # mdCATH's histidine protonation states
ELEMENT_Z = {"C": 6.0, "N": 7.0, "O": 8.0, "S": 16.0, "SE": 34.0}


@dataclass
class Structure:
    name: str
    xyz: np.ndarray  # (N, 3) float64, Å
    element: np.ndarray  # (N,) str
    atom_name: np.ndarray  # (N,) str
    res_index: np.ndarray  # (N,) residue number 0..R-1 in file order
    res_name: list[str]  # (R,)
    res_label: list[str]  # (R,) "chain:seqnum[icode]"
    chain_of_res: np.ndarray  # (R,) str
    bfactor: np.ndarray  # (N,)

    @property
    def n_res(self) -> int:
        return len(self.res_label)

    def ca_index(self) -> np.ndarray:
        """Index of each residue's CA atom (centroid-nearest atom when the CA is missing)."""
        out = np.full(self.n_res, -1, dtype=np.int64)
        is_ca = self.atom_name == "CA"
        out[self.res_index[is_ca]] = np.flatnonzero(is_ca)
        for r in np.flatnonzero(out < 0):
            out[r] = np.flatnonzero(self.res_index == r)[0]
        return out

    def weights(self) -> np.ndarray:
        """Scattering weight per atom (atomic number, what a cryo-EM map roughly sees at low resolution)."""
        return np.array([ELEMENT_Z.get(e, 6.0) for e in self.element])

    def residue_mean(self, values: np.ndarray) -> np.ndarray:
        """Per-residue mean of a per-atom array (NaN-aware)."""
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        s = np.bincount(self.res_index[ok], v[ok], minlength=self.n_res)
        n = np.bincount(self.res_index[ok], minlength=self.n_res)
        with np.errstate(invalid="ignore"):
            return s / np.where(n > 0, n, np.nan)


def load_structure(path: str | Path, name: str | None = None) -> Structure:
    """Heavy atoms of amino-acid residues of the first model, first altloc; waters, ligands and H removed."""
    import gemmi
    p = Path(path)
    st = gemmi.read_structure(str(p))
    st.remove_alternative_conformations()
    st.remove_hydrogens()
    model = st[0]
    xyz, el, an, ri, bf = [], [], [], [], []
    rn, rl, rc = [], [], []
    for ch in model:
        for res in ch:
            info = gemmi.find_tabulated_residue(CHARMM_NAMES.get(res.name, res.name))
            if info is None or not info.is_amino_acid():
                continue
            atoms = [a for a in res if a.element.name not in ("H", "D")]
            if not atoms:
                continue
            r = len(rl)
            rn.append(res.name)
            rl.append(f"{ch.name}:{res.seqid.num}{res.seqid.icode.strip()}")
            rc.append(ch.name)
            for a in atoms:
                xyz.append((a.pos.x, a.pos.y, a.pos.z))
                el.append(a.element.name.upper())
                an.append(a.name)
                ri.append(r)
                bf.append(a.b_iso)
    if not xyz:
        raise ValueError(f"{p.name} has no amino-acid atoms")
    return Structure(name or p.stem.split(".")[0], np.asarray(xyz, dtype=np.float64), np.asarray(el), np.asarray(an),
                     np.asarray(ri, dtype=np.int64), rn, rl, np.asarray(rc), np.asarray(bf, dtype=np.float64))
