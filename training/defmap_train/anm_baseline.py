"""Structure-only baseline on the ATLAS chains: log ANM C-alpha fluctuations vs log MD RMSF (per residue), next to the
shipped map-only models on maps simulated from the same MD RMSF, and the parameter-free combination of the two.

``python -m defmap_train.anm_baseline [MD_REFERENCE_DIR]`` prints Pearson r per chain; the README and the model card
quote it.  The combination is ``chimerax.defmap.combination.combine`` (the sum of the two per-residue z-scores, no
weight fitted to these chains), what ``defmap ... normalModes true`` does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from chimerax.defmap.combination import combine
from chimerax.defmap.nma import anm_log_fluctuations

DEFAULT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "md_reference"
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "md_reference_samples"
MODELS = Path(__file__).resolve().parents[2] / "onnx_models"


def ca_coords(pdb: Path) -> np.ndarray:
    import gemmi
    st = gemmi.read_structure(str(pdb))
    return np.array([[a.pos.x, a.pos.y, a.pos.z] for r in st[0][0] for a in r if a.name == "CA"])


def map_model_rows(chain: str, anm: np.ndarray, md_log: np.ndarray, resolution: float) -> list[tuple[float, float]]:
    """(model r, combined r) per simulated map of this chain, with the shipped model chosen for `resolution`."""
    from .dataset import list_samples, load_item
    from .evaluate import _onnx_center_pred, residue_mean, shipped_model_for
    from .train import atom_predictions, pearson
    mp = shipped_model_for(MODELS, resolution)
    rows = []
    for f in list_samples(SAMPLES).get(chain, []) if mp else []:
        it = load_item(f, resolution)
        cnn = residue_mean(atom_predictions(it, _onnx_center_pred(mp, it)), it.res_index)
        if len(cnn) == len(md_log):
            rows.append((pearson(cnn, md_log), pearson(combine(cnn, anm), md_log)))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    d = Path(argv[0]) if argv else DEFAULT_DIR
    table: list[tuple[float, ...]] = []
    for f in sorted(d.glob("*.rmsf_nm.txt")):
        chain = f.name.split(".")[0]
        md = np.array([float(x) for x in f.read_text().replace("\n", ",").split(",") if x.strip()])
        ca = ca_coords(d / f"{chain}.pdb")
        if len(ca) != len(md):
            print(f"{chain}: {len(ca)} C-alpha atoms but {len(md)} RMSF values; skipped")
            continue
        anm = anm_log_fluctuations(ca)
        md_log = np.log10(md * 10)
        r = float(np.corrcoef(anm, md_log)[0, 1])
        rows = map_model_rows(chain, anm, md_log, 5.0)
        line = f"{chain}: {len(ca)} residues, Pearson r with log MD RMSF: ANM (structure only) {r:.3f}"
        if rows:
            m = np.mean(rows, axis=0)
            line += f", 5 Å model on {len(rows)} simulated maps {m[0]:.3f}, z(model) + z(ANM) {m[1]:.3f}"
            table.append((r, *m))
        else:
            table.append((r, np.nan, np.nan))
        print(line)
    if table:
        t = np.array(table)
        print(f"ANM range {t[:, 0].min():.2f}–{t[:, 0].max():.2f}, mean {t[:, 0].mean():.3f}")
        if np.isfinite(t[:, 1]).all():
            print(f"5 Å model mean {t[:, 1].mean():.3f}; z(model) + z(ANM) mean {t[:, 2].mean():.3f}")
        else:
            print(f"(no map-model numbers: needs {SAMPLES} from training/reproduce.sh and the shipped models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
