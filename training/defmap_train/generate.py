"""The files a run trains on, generated from nothing: ensemble records of the structures (every label source),
simulated maps as MRC files, and the preprocessed samples.  Each file is seeded on its own (``paths.seed_of``), so
the files do not depend on the order or the number of worker processes, and files that exist are kept."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .paths import seed_of

SKIP_BY_DEFAULT = ("6ez8",)  # DEFMap's huntingtin model: kept for speed/scale tests, not training
SOURCES = ("anm", "md-reference", "residue-table", "xvg", "trajectory")


def structure_files(d: Path) -> list[Path]:
    return sorted(p for p in Path(d).iterdir() if p.suffix.lower() in (".pdb", ".cif", ".ent", ".mmcif"))


def list_lines(path: str) -> list[list[str]]:
    """The fields of each line of a list file (blank lines and # comments skipped)."""
    return [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def pool_map(fn, jobs, workers: int):
    if workers <= 1:
        return map(fn, jobs)
    from multiprocessing import get_context
    pool = get_context("fork").Pool(workers)
    return pool.imap_unordered(fn, jobs)


# ------------------------------------------------------------------ ensemble records

def _anm_one(args) -> str:
    path, out, max_res, labels = args
    from .ensembles import Deviations, anm_record, save_record
    from .structure import load_structure
    st = load_structure(path)
    if st.n_res > max_res:
        return f"skip {st.name}: {st.n_res} residues > --max-residues {max_res}"
    rec = anm_record(st, np.random.default_rng(seed_of("anm", st.name)),
                     deviations=Deviations() if labels == "deviations" else None)
    save_record(rec, Path(out) / f"{st.name}.npz")
    return f"{st.name}: {len(st.xyz)} atoms, {st.n_res} residues, mean RMSF {rec['rmsf'].mean():.2f} Å"


def ensembles(source: str, out: Path, *, structures: Path, list_file: str | None = None, max_residues: int = 1500,
              labels: str = "deviations", skip=SKIP_BY_DEFAULT, limit: int = 0, workers: int = 2) -> None:
    """Per-atom RMSF records (``ensembles.save_record``) from one source: ANM of the structures in ``structures``
    (labels with per-protein deviations, or plain ANM), the md_reference chains' residue tables, or the list file of
    a residue-table, GROMACS xvg or trajectory source."""
    from .ensembles import record_from_residue_table, record_from_trajectory, record_from_xvg, save_record
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if source == "anm":
        files = [p for p in structure_files(Path(structures)) if p.stem.split(".")[0] not in skip]
        files = files[:limit] if limit else files
        for msg in pool_map(_anm_one, [(p, out, max_residues, labels) for p in files], workers):
            print(msg, flush=True)
    elif source == "md-reference":  # per-residue C-alpha RMSF tables beside each chain
        for p in sorted(Path(structures).glob("*.pdb")):
            rec = record_from_residue_table(p, p.with_suffix(".rmsf_nm.txt"), unit="nm", name=p.stem)
            save_record(rec, out / f"{p.stem}.npz")
            print(f"{p.stem}: {rec['rmsf'].mean():.2f} Å mean RMSF (MD)")
    elif source == "residue-table":  # list file: structure table [nm|A]
        for ln in list_lines(list_file):
            rec = record_from_residue_table(ln[0], ln[1], unit=ln[2] if len(ln) > 2 else "nm")
            save_record(rec, out / f"{rec['name']}.npz")
    elif source == "xvg":  # DEFMap list: pdb map rmsf.xvg gromacs.pdb
        for ln in list_lines(list_file):
            rec = record_from_xvg(ln[0], ln[2], ln[3])
            save_record(rec, out / f"{rec['name']}.npz")
            print(f"{rec['name']}: {np.isfinite(rec['rmsf']).mean():.0%} atoms labelled")
    elif source == "trajectory":  # list: trajectory topology [name]
        for ln in list_lines(list_file):
            rec = record_from_trajectory(ln[0], ln[1], ln[2] if len(ln) > 2 else None)
            save_record(rec, out / f"{rec['name']}.npz")
    else:
        raise SystemExit(f"unknown source {source} (one of {', '.join(SOURCES)})")


# ------------------------------------------------------------------ samples

def randomization(kind: str):
    """The kinds of simulated map the training set mixes (file stem = kind, but frames-clean writes map*):
    map = the average of 10-50 ensemble frames with every confounder; dw = the infinite-ensemble limit (a real map
    averages ~1e5 particles) with every confounder; clean = the same with none, so blur is the only signal;
    frames-clean = frames, no confounder (``--clean``)."""
    from dataclasses import replace

    from .maps import CLEAN, Randomization
    return {"map": Randomization(min_frames=10), "dw": Randomization(n_frames=0),
            "clean": replace(CLEAN, n_frames=0), "frames-clean": CLEAN}[kind]


def dataset_one(args) -> str:
    """Simulate map k of one kind from one record and write its sample (PROTEIN__KINDk.npz) unless it exists."""
    rec_path, out, k, kind, resolutions = args
    from chimerax.defmap.preprocess import grid_transforms

    from .dataset import make_sample
    from .ensembles import load_record
    from .maps import simulate_map
    name = Path(rec_path).stem  # = the record's name (ensembles() writes NAME.npz)
    stem = "map" if kind == "frames-clean" else kind
    dst = Path(out) / f"{name}__{stem}{k}.npz"
    if dst.exists():
        return f"{dst.name} exists"
    rec = load_record(Path(rec_path))
    # the frame maps keep the seeds they were first made with, so cached samples stay valid
    rng = np.random.default_rng(seed_of("map", name, k, kind == "map") if kind in ("map", "frames-clean")
                                else seed_of("map", kind, name, k))
    t = time.time()
    sim = simulate_map(rec, rng, randomization(kind))
    x2i, _ = grid_transforms(sim.origin, (sim.voxel_size,) * 3)
    # the model a user would have fitted into this map: at the mean of the frames it averages
    fitted = {**rec, "xyz": sim.model_xyz}
    sample = make_sample(sim.values, x2i, sim.voxel_size, fitted, sim.resolution, rng, resolutions)
    sample["map_params"] = json.dumps(sim.params)
    np.savez(dst, **sample)
    return f"{dst.name}: {sim.resolution:.1f} Å, {time.time() - t:.1f} s"


def dataset(ensembles_dir: Path, out: Path, *, counts: dict[str, int], resolutions: tuple[float, ...],
            real_list: str | None = None, workers: int = 2) -> None:
    """Samples of every record: ``counts`` maps per protein of each kind (see :func:`randomization`), and the real
    maps of ``real_list``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recs = sorted(Path(ensembles_dir).glob("*.npz"))
    jobs = [(p, out, k, kind, resolutions) for p in recs for kind, n in counts.items() for k in range(n)]
    for msg in pool_map(dataset_one, jobs, workers):
        print(msg, flush=True)
    if real_list:
        real_samples(real_list, out, resolutions)


def real_samples(list_file: str, out: Path, res) -> None:
    """Real maps with fitted models and MD RMSF: DEFMap's list format 'pdb map rmsf.xvg gromacs.pdb [resolution]'."""
    from .dataset import make_sample
    from .ensembles import record_from_xvg
    from .maps import read_mrc
    for ln in list_lines(list_file):
        rec = record_from_xvg(ln[0], ln[2], ln[3])
        values, x2i, vs = read_mrc(ln[1])
        r = float(ln[4]) if len(ln) > 4 else None
        sample = make_sample(values, x2i, vs, rec, r, np.random.default_rng(0), res, p_unknown_resolution=0.0)
        np.savez(out / f"{rec['name']}__real0.npz", **sample)
        print(f"{rec['name']}: real map {Path(ln[1]).name}")


def mrc_maps(ensembles_dir: Path, out: Path, *, maps_per_protein: int = 1, limit: int = 3,
             clean: bool = False) -> None:
    """Write simulated maps as MRC files (to look at them, or to use them like real maps)."""
    import mrcfile

    from .ensembles import load_record
    from .maps import CLEAN, Randomization, simulate_map
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted(Path(ensembles_dir).glob("*.npz"))[:limit or None]:
        rec = load_record(p)
        for k in range(maps_per_protein):
            sim = simulate_map(rec, np.random.default_rng(seed_of("map", rec["name"], k, not clean)),
                               CLEAN if clean else Randomization())
            dst = out / f"{rec['name']}__map{k}.mrc"
            with mrcfile.new(str(dst), overwrite=True) as f:
                f.set_data(sim.values)
                f.voxel_size = sim.voxel_size
                f.header.origin.x, f.header.origin.y, f.header.origin.z = (float(v) for v in sim.origin)
            print(f"{dst.name}: {sim.params}")
