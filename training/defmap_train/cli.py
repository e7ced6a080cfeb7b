"""defmap-train: ensembles -> maps -> dataset -> train -> evaluate -> export (and md, smoke)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]  # training/
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATA = HERE / "data"
SKIP_BY_DEFAULT = ("6ez8",)  # DEFMap's huntingtin model: kept for speed/scale tests, not training


def seed_of(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def structure_files(d: Path) -> list[Path]:
    return sorted(p for p in Path(d).iterdir() if p.suffix.lower() in (".pdb", ".cif", ".ent", ".mmcif"))


# ------------------------------------------------------------------ ensembles

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


def cmd_ensembles(a) -> None:
    from .ensembles import record_from_residue_table, record_from_trajectory, record_from_xvg, save_record
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.source == "anm":
        files = [p for p in structure_files(Path(a.structures)) if p.stem.split(".")[0] not in a.skip]
        files = files[:a.limit] if a.limit else files
        jobs = [(p, out, a.max_residues, a.labels) for p in files]
        for msg in _pool_map(_anm_one, jobs, a.workers):
            print(msg, flush=True)
    elif a.source == "md-reference":  # the four ATLAS chains: per-residue C-alpha RMSF tables
        for p in sorted(Path(a.structures).glob("*.pdb")):
            rec = record_from_residue_table(p, p.with_suffix(".rmsf_nm.txt"), unit="nm", name=p.stem)
            save_record(rec, out / f"{p.stem}.npz")
            print(f"{p.stem}: {rec['rmsf'].mean():.2f} Å mean RMSF (ATLAS MD)")
    elif a.source == "residue-table":  # list file: structure table [nm|A]
        for ln in _list_lines(a.list):
            rec = record_from_residue_table(ln[0], ln[1], unit=ln[2] if len(ln) > 2 else "nm")
            save_record(rec, out / f"{rec['name']}.npz")
    elif a.source == "xvg":  # DEFMap list: pdb map rmsf.xvg gromacs.pdb
        for ln in _list_lines(a.list):
            rec = record_from_xvg(ln[0], ln[2], ln[3])
            save_record(rec, out / f"{rec['name']}.npz")
            print(f"{rec['name']}: {np.isfinite(rec['rmsf']).mean():.0%} atoms labelled")
    elif a.source == "trajectory":  # list: trajectory topology [name]
        for ln in _list_lines(a.list):
            rec = record_from_trajectory(ln[0], ln[1], ln[2] if len(ln) > 2 else None)
            save_record(rec, out / f"{rec['name']}.npz")
    else:
        raise SystemExit(f"unknown source {a.source}")


def _list_lines(path: str) -> list[list[str]]:
    return [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _pool_map(fn, jobs, workers: int):
    if workers <= 1:
        return map(fn, jobs)
    from multiprocessing import get_context
    pool = get_context("fork").Pool(workers)
    return pool.imap_unordered(fn, jobs)


# ------------------------------------------------------------------ maps / dataset

def _randomization(kind: str):
    """The kinds of simulated map the training set mixes (file stem = kind, but frames-clean writes map*):
    map = the average of 10-50 ensemble frames with every confounder (the only kind before round 4); dw = the
    infinite-ensemble limit (a real map averages ~1e5 particles) with every confounder; clean = the same with none,
    so blur is the only signal; frames-clean = frames, no confounder (``--clean``)."""
    from dataclasses import replace

    from .maps import CLEAN, Randomization
    return {"map": Randomization(min_frames=10), "dw": Randomization(n_frames=0),
            "clean": replace(CLEAN, n_frames=0), "frames-clean": CLEAN}[kind]


def _dataset_one(args) -> str:
    rec_path, out, k, kind, resolutions = args
    from chimerax.defmap.preprocess import grid_transforms

    from .dataset import make_sample
    from .ensembles import load_record
    from .maps import simulate_map
    name = Path(rec_path).stem  # = the record's name (cmd_ensembles writes NAME.npz)
    stem = "map" if kind == "frames-clean" else kind
    dst = Path(out) / f"{name}__{stem}{k}.npz"
    if dst.exists():
        return f"{dst.name} exists"
    rec = load_record(Path(rec_path))
    # the seeds of round 3's frame maps are kept, so their cached samples stay valid
    rng = np.random.default_rng(seed_of("map", name, k, kind == "map") if kind in ("map", "frames-clean")
                                else seed_of("map", kind, name, k))
    t = time.time()
    sim = simulate_map(rec, rng, _randomization(kind))
    x2i, _ = grid_transforms(sim.origin, (sim.voxel_size,) * 3)
    # the model a user would have fitted into this map: at the mean of the frames it averages
    fitted = {**rec, "xyz": sim.model_xyz}
    sample = make_sample(sim.values, x2i, sim.voxel_size, fitted, sim.resolution, rng, resolutions)
    sample["map_params"] = json.dumps(sim.params)
    np.savez(dst, **sample)
    return f"{dst.name}: {sim.resolution:.1f} Å, {time.time() - t:.1f} s"


def cmd_dataset(a) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    recs = sorted(Path(a.ensembles).glob("*.npz"))
    res = tuple(float(r) for r in a.resolutions.split(","))
    counts = {"frames-clean" if a.clean else "map": a.maps_per_protein, "dw": a.dw_maps, "clean": a.clean_maps}
    jobs = [(p, out, k, kind, res) for p in recs for kind, n in counts.items() for k in range(n)]
    for msg in _pool_map(_dataset_one, jobs, a.workers):
        print(msg, flush=True)
    if a.real_list:
        _real_samples(a.real_list, out, res)


def _real_samples(list_file: str, out: Path, res) -> None:
    """Real maps with fitted models and MD RMSF: DEFMap's list format 'pdb map rmsf.xvg gromacs.pdb [resolution]'."""
    from .dataset import make_sample
    from .ensembles import record_from_xvg
    from .maps import read_mrc
    for ln in _list_lines(list_file):
        rec = record_from_xvg(ln[0], ln[2], ln[3])
        values, x2i, vs = read_mrc(ln[1])
        r = float(ln[4]) if len(ln) > 4 else None
        sample = make_sample(values, x2i, vs, rec, r, np.random.default_rng(0), res, p_unknown_resolution=0.0)
        np.savez(out / f"{rec['name']}__real0.npz", **sample)
        print(f"{rec['name']}: real map {Path(ln[1]).name}")


def cmd_maps(a) -> None:
    """Write simulated maps as MRC files (to look at them, or to use them like real maps)."""
    import mrcfile

    from .ensembles import load_record
    from .maps import CLEAN, Randomization, simulate_map
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted(Path(a.ensembles).glob("*.npz"))[:a.limit or None]:
        rec = load_record(p)
        for k in range(a.maps_per_protein):
            sim = simulate_map(rec, np.random.default_rng(seed_of("map", rec["name"], k, not a.clean)),
                               CLEAN if a.clean else Randomization())
            dst = out / f"{rec['name']}__map{k}.mrc"
            with mrcfile.new(str(dst), overwrite=True) as f:
                f.set_data(sim.values)
                f.voxel_size = sim.voxel_size
                f.header.origin.x, f.header.origin.y, f.header.origin.z = (float(v) for v in sim.origin)
            print(f"{dst.name}: {sim.params}")


# ------------------------------------------------------------------ train / evaluate / export

def cmd_train(a) -> None:
    from .evaluate import train_final
    train_final(Path(a.data), Path(a.out), resolution=a.resolution, arch=a.arch, minutes=a.minutes,
                init=a.init, val_fraction=a.val_fraction, exclude=a.exclude.split(",") if a.exclude else [],
                seed=a.seed, lr=a.lr, sampler=a.sampler)


def cmd_evaluate(a) -> None:
    from .evaluate import evaluate
    evaluate(a)


def cmd_export(a) -> None:
    from .export import export_checkpoint
    export_checkpoint(Path(a.checkpoint), Path(a.out), name=a.name, metrics_json=a.metrics)


def cmd_md(a) -> None:
    from .ensembles import record_from_trajectory, run_openmm, save_record
    dcd = run_openmm(a.pdb, a.out, steps=a.steps, report_every=a.report_every, solvent=a.solvent,
                     platform=a.platform)
    rec = record_from_trajectory(dcd, Path(a.out) / "prepared.pdb", name=Path(a.pdb).stem)
    save_record(rec, Path(a.out) / f"{Path(a.pdb).stem}.npz")
    print(f"MD record: {len(rec['frames'])} frames, mean RMSF {rec['rmsf'].mean():.3f} Å -> {a.out}")


def cmd_validate_md(a) -> None:
    from .validate_md import run
    run(a)


def cmd_soup(a) -> None:
    from .soup import run
    run(a)


def cmd_sd_probe(a) -> None:
    from .sd_probe import run
    run(a)


def cmd_engine_check(a) -> None:
    from .engine_check import run
    run(a)


def cmd_smoke(a) -> None:
    from .smoke import smoke
    smoke(Path(a.out), md=not a.no_md)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="defmap-train", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("ensembles", help="per-atom RMSF + frames from ANM, MD trajectories or RMSF tables")
    e.add_argument("--source", default="anm", choices=["anm", "md-reference", "residue-table", "xvg", "trajectory"])
    e.add_argument("--structures", default=str(SHARED / "structures"))
    e.add_argument("--list", help="list file for residue-table / xvg / trajectory sources")
    e.add_argument("--out", default=str(DEFAULT_DATA / "ensembles"))
    e.add_argument("--max-residues", type=int, default=1500)
    e.add_argument("--labels", choices=["deviations", "anm"], default="deviations",
                   help="ANM with per-protein deviations only the map shows (default), or plain ANM (the old labels)")
    e.add_argument("--skip", nargs="*", default=list(SKIP_BY_DEFAULT))
    e.add_argument("--limit", type=int, default=0)
    e.add_argument("--workers", type=int, default=2)
    e.set_defaults(fn=cmd_ensembles)
    d = sub.add_parser("dataset", help="simulate randomized maps and preprocess them into samples")
    d.add_argument("--ensembles", default=str(DEFAULT_DATA / "ensembles"))
    d.add_argument("--out", default=str(DEFAULT_DATA / "samples"))
    d.add_argument("--maps-per-protein", type=int, default=5)
    d.add_argument("--resolutions", default="5,6,7")
    d.add_argument("--clean", action="store_true", help="no domain randomization (to show how easy that is)")
    d.add_argument("--dw-maps", type=int, default=0,
                   help="per protein, Debye-Waller (infinite-ensemble) maps with every confounder (files *__dw*.npz)")
    d.add_argument("--clean-maps", type=int, default=0,
                   help="per protein, Debye-Waller maps with no confounder (files *__clean*.npz)")
    d.add_argument("--real-list", help="real maps: 'pdb map rmsf.xvg gromacs.pdb [resolution]' per line")
    d.add_argument("--workers", type=int, default=2)
    d.set_defaults(fn=cmd_dataset)
    m = sub.add_parser("maps", help="write simulated maps as MRC files")
    m.add_argument("--ensembles", default=str(DEFAULT_DATA / "ensembles"))
    m.add_argument("--out", default=str(DEFAULT_DATA / "maps"))
    m.add_argument("--maps-per-protein", type=int, default=1)
    m.add_argument("--limit", type=int, default=3)
    m.add_argument("--clean", action="store_true")
    m.set_defaults(fn=cmd_maps)
    t = sub.add_parser("train", help="train one model on all proteins (a protein-disjoint part for early stopping)")
    t.add_argument("--data", default=str(DEFAULT_DATA / "samples"))
    t.add_argument("--out", required=True)
    t.add_argument("--resolution", type=float, default=5.0)
    t.add_argument("--arch", default="fcn", choices=["fcn", "reference"])
    t.add_argument("--minutes", type=float, default=10.0)
    t.add_argument("--init", help="checkpoint to fine-tune from")
    t.add_argument("--val-fraction", type=float, default=0.15)
    t.add_argument("--exclude", default="")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--sampler", choices=["patches", "crops"], default="patches",
                   help="random single patches (default) or dense crops (FCN only)")
    t.set_defaults(fn=cmd_train)
    v = sub.add_parser("evaluate", help="protein-disjoint k-fold CV, baselines, EMD-3488, ATLAS chains -> reports/")
    v.add_argument("--data", default=str(DEFAULT_DATA / "samples"))
    v.add_argument("--md-reference", default=str(DEFAULT_DATA / "md_reference_samples"))
    v.add_argument("--resolutions", default="5,6,7")
    v.add_argument("--folds", type=int, default=3)
    v.add_argument("--arch", default="fcn", choices=["fcn", "reference"])
    v.add_argument("--minutes", type=float, default=5.0, help="training budget per fold at the first resolution")
    v.add_argument("--finetune-minutes", type=float, default=2.0, help="per fold at later resolutions")
    v.add_argument("--reference-minutes", type=float, default=0.0,
                   help="also train DEFMap's reference net on one fold for this many minutes (reduced budget)")
    v.add_argument("--models", default=str(REPO / "onnx_models"), help="shipped models for EMD-3488 / ATLAS")
    v.add_argument("--runs", default=str(HERE / "runs" / "cv"))
    v.add_argument("--reports", default=str(HERE / "reports"))
    v.add_argument("--sampler", choices=["patches", "crops"], default="patches",
                   help="FCN training: random single patches (default) or dense crops")
    v.add_argument("--tta", type=int, default=8, help="cube rotations for test-time augmentation (≤ 24)")
    v.add_argument("--eval-maps", type=int, default=2, help="maps per test protein (half at coarser resolutions)")
    v.set_defaults(fn=cmd_evaluate)
    x = sub.add_parser("export", help="checkpoint -> ONNX with metadata, parity-checked against onnxruntime")
    x.add_argument("checkpoint")
    x.add_argument("--out", required=True)
    x.add_argument("--name")
    x.add_argument("--metrics", help="JSON file with metrics to embed")
    x.set_defaults(fn=cmd_export)
    md = sub.add_parser("md", help="OpenMM MD (pdbfixer prep, checkpoint/resume) -> ensemble record")
    md.add_argument("pdb")
    md.add_argument("--out", required=True)
    md.add_argument("--steps", type=int, default=50_000)
    md.add_argument("--report-every", type=int, default=500)
    md.add_argument("--solvent", default="implicit", choices=["implicit", "explicit"])
    md.add_argument("--platform")
    md.set_defaults(fn=cmd_md)
    vm = sub.add_parser("validate-md", help="real-MD yardstick: md_reference chains, raw intensity, ANM, models")
    vm.add_argument("--md-reference", default=str(SHARED / "md_reference"))
    vm.add_argument("--models", nargs="*", default=[str(REPO / "onnx_models")],
                    help="folders of ONNX models (map-only and map+model kinds, chosen by resolution)")
    vm.add_argument("--maps-per-variant", type=int, default=2)
    vm.add_argument("--residue-atoms", choices=["ca", "backbone", "heavy"], default="heavy")
    vm.add_argument("--chains", default="", help="comma-separated subset (default: all)")
    vm.add_argument("--out", default=str(HERE / "reports" / "validate_md"),
                    help="writes OUT.json and OUT.md ('' to print only)")
    vm.add_argument("--docs", nargs="*", help="files whose validate-md block to regenerate (README.md, MODEL_CARD)")
    vm.add_argument("--train-json", nargs="*", help="train2_<res>A.json files: their CV's ANM-vs-label r goes "
                    "beside the table")
    vm.set_defaults(fn=cmd_validate_md)
    so = sub.add_parser("soup", help="average train2 runs' checkpoints (B, C... warm-started from A), as a new run")
    so.add_argument("runs", nargs="+", help="RUNS folders A B ... (each with map/ and mapmodel/)")
    so.add_argument("--out", required=True, help="a new RUNS folder; then RUNS=OUT reproduce_issue11.sh calibrates "
                    "and exports it without training")
    so.set_defaults(fn=cmd_soup)
    sp = sub.add_parser("sd-probe", help="which per-residue quantities rank the real-MD errors (uncertainty check)")
    sp.add_argument("--models", nargs="*", default=[str(REPO / "onnx_models")])
    sp.add_argument("--maps-per-variant", type=int, default=2)
    sp.add_argument("--out", default=str(HERE / "reports" / "sd_probe"), help="writes OUT.md and OUT.json")
    sp.set_defaults(fn=cmd_sd_probe)
    ec = sub.add_parser("engine-check", help="label engine vs md_reference: log-RMSF spread and r with ANM")
    ec.add_argument("--ensembles", default=str(DEFAULT_DATA / "ensembles"))
    ec.add_argument("--md-reference", default=str(SHARED / "md_reference"))
    ec.add_argument("--out", default=str(HERE / "reports" / "engine_check.json"))
    ec.set_defaults(fn=cmd_engine_check)
    from .mapmodel import add_parser as add_train2
    add_train2(sub, str(DEFAULT_DATA / "samples"), str(DEFAULT_DATA / "ensembles"))
    s = sub.add_parser("smoke", help="tiny end-to-end run (≤ 3 min on 2 cores)")
    s.add_argument("--out", default=str(HERE / "runs" / "smoke"))
    s.add_argument("--no-md", action="store_true")
    s.set_defaults(fn=cmd_smoke)
    a = ap.parse_args(argv)
    a.fn(a)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        # under torchrun the work is done and the process group destroyed, yet about 1 exit in 10 aborted in
        # interpreter teardown ("terminate called without an active exception", torch 2.13 gloo, CPU), which
        # torchrun reports as a failed job: leave without the teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
