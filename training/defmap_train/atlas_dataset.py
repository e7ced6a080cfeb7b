"""``defmap-train atlas-data``: the MD-label training set, engine maps of the atlas_train chains labelled by their
ATLAS MD RMSF.

Each chain becomes an ensemble record (``atlas_train.chain_record``: blurred by the MD C-alpha RMSF of each atom's
residue, labelled by it, no label where ATLAS lacks the residue) and ``generate.dataset`` makes its samples as for
the engine's proteins: ``dw`` maps (Debye–Waller blur by the RMSF with every training confounder) and ``clean`` ones
(none).  ATLAS gives one RMSF per residue (C-alpha), so every atom of a residue carries it.  Of the chains that share
one structure chain (``atlas_train.SAME_STRUCTURE``) only the first is kept, so that a protein-disjoint split of the
samples by name cannot put one structure on both sides.  md_reference is never read.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atlas_train import SAME_STRUCTURE, chain_record, chains
from .ensembles import save_record
from .generate import dataset
from .paths import DEFAULT_DATA

RECORDS = DEFAULT_DATA / "atlas_records"
SAMPLES = DEFAULT_DATA / "atlas_samples"


def training_chains() -> list[str]:
    second = {b for _, b in SAME_STRUCTURE}
    return [n for n in chains() if n not in second]


def write_records(out: Path = RECORDS) -> list[Path]:
    paths = []
    for name in training_chains():
        p = Path(out) / f"{name}.npz"
        if not p.exists():
            save_record(chain_record(name), p)
        paths.append(p)
    return paths


def run(records: Path, samples: Path, dw_maps: int, clean_maps: int, workers: int) -> dict:
    paths = write_records(records)
    dataset(records, samples, counts={"dw": dw_maps, "clean": clean_maps}, resolutions=(5.0, 6.0, 7.0),
            workers=workers)
    return {"chains": len(paths), "records": str(records), "samples": str(samples), "dw_maps": dw_maps,
            "clean_maps": clean_maps}


def add_parser(sub) -> None:
    p = sub.add_parser("atlas-data", help="engine maps of the atlas_train chains labelled by ATLAS MD (training set)")
    p.add_argument("--records", type=Path, default=RECORDS)
    p.add_argument("--out", type=Path, default=SAMPLES)
    p.add_argument("--dw-maps", type=int, default=4)
    p.add_argument("--clean-maps", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(fn=lambda a: print(json.dumps(run(a.records, a.out, a.dw_maps, a.clean_maps, a.workers))))
