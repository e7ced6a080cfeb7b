"""Structure-only baseline on the ATLAS chains: log ANM C-alpha fluctuations vs log MD RMSF (per residue).

``python -m defmap_train.anm_baseline [MD_REFERENCE_DIR]`` prints Pearson r per chain; the README quotes it as the
baseline a map-based prediction should beat.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .ensembles import anm_modes

DEFAULT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "md_reference"


def ca_coords(pdb: Path) -> np.ndarray:
    import gemmi
    st = gemmi.read_structure(str(pdb))
    return np.array([[a.pos.x, a.pos.y, a.pos.z] for r in st[0][0] for a in r if a.name == "CA"])


def anm_log_fluct(ca: np.ndarray, cutoff: float = 15.0) -> np.ndarray:
    w, v = anm_modes(ca, cutoff)
    msf = ((v.reshape(len(ca), 3, -1) ** 2).sum(axis=1) / w).sum(axis=1)
    return 0.5 * np.log10(msf)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    d = Path(argv[0]) if argv else DEFAULT_DIR
    rs = []
    for f in sorted(d.glob("*.rmsf_nm.txt")):
        md = np.array([float(x) for x in f.read_text().replace("\n", ",").split(",") if x.strip()])
        ca = ca_coords(d / f.name.replace(".rmsf_nm.txt", ".pdb"))
        if len(ca) != len(md):
            print(f"{f.name}: {len(ca)} C-alpha atoms but {len(md)} RMSF values; skipped")
            continue
        r = float(np.corrcoef(anm_log_fluct(ca), np.log10(md * 10))[0, 1])
        rs.append(r)
        print(f"{f.name.split('.')[0]}: {len(ca)} residues, Pearson r(log ANM, log MD RMSF) = {r:.3f}")
    if rs:
        print(f"range {min(rs):.2f}–{max(rs):.2f}, mean {np.mean(rs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
