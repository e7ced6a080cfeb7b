"""What the bundle's recipe reports on engine maps of the atlas_train chains, beside their ATLAS MD: the calibration set
for values in MD units and for the SD (``md_units.py``), never md_reference.

Each chain's maps are made by the training engine (``maps.simulate_map``, Debye–Waller blur by the chain's own MD
RMSF; ``hard``: the training randomization, ``clean``: none), so what is fitted here is in-family; validate-md
reports it on both families.  Maps and per-map results are cached under ``training/data/atlas_eval`` (seeded; the
results per set of model files and version of the bundle's code, ``models_key``); a run that stops resumes where it
stopped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from chimerax.defmap.shared_features import file_sha256

from .atlas_train import chain_record, chains, load_chain
from .paths import DEFAULT_DATA
from .validate_md import cached_maps, load_models, pick, residue_values, structure_mode

CACHE = DEFAULT_DATA / "atlas_eval"
VARIANTS = ("hard", "clean")
MAPS = {"hard": 2, "clean": 1}  # maps per chain and variant
KINDS = {"map+model": True, "map": False}  # structure mode with each model kind (map-only: the SD of its kind)


def chain_records(name: str) -> dict[str, dict]:
    """variant -> ensemble record of one chain (``atlas_train.chain_record``)."""
    rec = chain_record(name)
    return {"hard": rec, "clean": rec}


def chain_maps(name: str, cache: Path = CACHE) -> list[dict]:
    out = []
    for variant in VARIANTS:
        out += cached_maps(Path(), name, MAPS[variant], cache / "maps", records=lambda: chain_records(name),
                           variants=(variant,))
    return out


def cached_arrays(f: Path, make) -> dict[str, np.ndarray]:
    """The arrays of ``f``, written first from ``make()`` (a dict of arrays) when the file is not there."""
    if not f.exists():
        arrays = make()
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez(f, **arrays)
    with np.load(f) as z:
        return {k: z[k] for k in z.files}


def chain_results(name: str, models, residue_atoms: str = "backbone", cache: Path = CACHE) -> list[dict]:
    """Per map of the chain and model kind: residue arrays (truth = log10 MD RMSF, the value structure mode reports
    in the network's units, its SD, the structure prior), the run's expected r, and per atom the network's value and
    head SD (for the SD's slope, power and run factor)."""
    def make() -> dict[str, np.ndarray]:
        st, rmsf = load_chain(name)
        arrays: dict[str, np.ndarray] = {"truth": np.log10(rmsf), "res_index": st.res_index,
                                         "atom_name": st.atom_name}
        for i, m in enumerate(chain_maps(name, cache)):
            for kind, with_model in KINDS.items():
                info = pick(models, float(m["resolution"]), with_model)
                if info is None:
                    continue
                sm = structure_mode(info, st, m, residue_atoms, normal_modes=False, md_units=False)
                key = f"{i}|{m['variant']}|{kind}"
                for k in ("reported", "sd", "atom_network", "atom_head_sd"):
                    if sm.get(k) is not None:
                        arrays[f"{key}|{k}"] = sm[k]
                if sm.get("expected") is not None:
                    arrays[f"{key}|expected_r"] = np.array(sm["expected"].r)
                for k, v in (sm.get("run_features") or {}).items():  # what the run measured (the SD's run factor)
                    arrays[f"{key}|feature_{k}"] = np.array(float(v))
        return arrays
    d = cached_arrays(cache / "results" / models_key(models) / f"{name}.npz", make)
    out: dict[tuple, dict] = {}
    for k, v in d.items():
        if k.count("|") == 3:
            i, variant, kind, what = k.split("|")
            out.setdefault((i, variant, kind), {"chain": name, "variant": variant, "kind": kind,
                                                "truth": d["truth"], "res_index": d["res_index"],
                                                "atom_name": d["atom_name"]})[what] = v
    return list(out.values())


def per_residue(row: dict, residue_atoms: str = "backbone"):
    """The per-residue mean (over ``residue_atoms``) of per-atom values of this row's chain."""
    n = len(row["truth"])
    return lambda v, atoms=residue_atoms: residue_values(v, row["res_index"], row["atom_name"], n, atoms)


def models_key(models) -> str:
    """A short hash of the model files (weights and calibration) and of the bundle's modules: cached results belong
    to the models and the recipe they came from (a recipe change, such as how voxel mode carries its level to the
    lattice, must not reuse arrays the old recipe made)."""
    import chimerax.defmap as bundle
    h = hashlib.sha256()
    for m in sorted(models, key=lambda m: m.path.name):
        h.update(m.path.name.encode() + file_sha256(m.path).encode())
    for f in sorted(Path(bundle.__file__).resolve().parent.glob("*.py")):
        h.update(f.name.encode() + file_sha256(f).encode())
    return h.hexdigest()[:12]


def all_results(models_dirs: Path | list[Path], names: list[str] | None = None,
                residue_atoms: str = "backbone") -> list[dict]:
    """Every chain's rows, computing what the cache lacks (one line per chain so a background run can be followed)."""
    dirs = [Path(models_dirs)] if isinstance(models_dirs, (str, Path)) else [Path(d) for d in models_dirs]
    models = load_models(dirs)
    out = []
    for name in names or chains():
        rows = chain_results(name, models, residue_atoms)
        print(f"{name}: {len(rows)} rows", flush=True)
        out += rows
    return out
