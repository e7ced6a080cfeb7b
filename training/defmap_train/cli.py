"""defmap-train: ensembles -> dataset -> train (CV, calibration, final models, ONNX) -> validate-md, and soup,
export, stages, md, maps, smoke, engine-check and sd-probe.  This module only parses arguments and hands them to the
module that does the work; nothing imports it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .paths import DEFAULT_DATA, HERE, REPO, SHARED


def cmd_ensembles(a) -> None:
    from .generate import ensembles
    ensembles(a.source, Path(a.out), structures=Path(a.structures), list_file=a.list, max_residues=a.max_residues,
              labels=a.labels, skip=a.skip, limit=a.limit, workers=a.workers)


def cmd_dataset(a) -> None:
    from .generate import dataset
    counts = {"frames-clean" if a.clean else "map": a.maps_per_protein, "dw": a.dw_maps, "clean": a.clean_maps}
    res = tuple(float(r) for r in a.resolutions.split(","))
    dataset(Path(a.ensembles), Path(a.out), counts=counts, resolutions=res, real_list=a.real_list, workers=a.workers)


def cmd_maps(a) -> None:
    from .generate import mrc_maps
    mrc_maps(Path(a.ensembles), Path(a.out), maps_per_protein=a.maps_per_protein, limit=a.limit, clean=a.clean)


def cmd_train(a) -> None:
    from .pipeline import run
    run(a)


def cmd_soup(a) -> None:
    from .soup import run
    run(a)


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


def cmd_validate_md_compare(a) -> None:
    import json

    from .validate_md import compare_lines
    print("\n".join(compare_lines(json.loads(a.a.read_text(encoding="utf-8")),
                                   json.loads(a.b.read_text(encoding="utf-8")), a.column)))


def cmd_prior(a) -> None:
    from .prior import run
    run(a)


def cmd_smoke(a) -> None:
    from .smoke import smoke
    smoke(Path(a.out), md=not a.no_md)


def cmd_engine_check(a) -> None:
    from .diagnostics.engine_check import run
    run(a)


def cmd_input_stats(a) -> None:
    from .diagnostics.input_stats import run
    run(a)


def cmd_sd_probe(a) -> None:
    from .diagnostics.sd_probe import run
    run(a)


def _data_parsers(sub) -> None:
    from .generate import SKIP_BY_DEFAULT, SOURCES
    e = sub.add_parser("ensembles", help="per-atom RMSF + frames from ANM, MD trajectories or RMSF tables")
    e.add_argument("--source", default="anm", choices=SOURCES)
    e.add_argument("--structures", default=str(SHARED / "structures"))
    e.add_argument("--list", help="list file for residue-table / xvg / trajectory sources")
    e.add_argument("--out", default=str(DEFAULT_DATA / "ensembles"))
    e.add_argument("--max-residues", type=int, default=1500)
    e.add_argument("--labels", choices=["deviations", "anm"], default="deviations",
                   help="ANM with per-protein deviations only the map shows (default), or plain ANM")
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
    md = sub.add_parser("md", help="OpenMM MD (pdbfixer prep, checkpoint/resume) -> ensemble record")
    md.add_argument("pdb")
    md.add_argument("--out", required=True)
    md.add_argument("--steps", type=int, default=50_000)
    md.add_argument("--report-every", type=int, default=500)
    md.add_argument("--solvent", default="implicit", choices=["implicit", "explicit"])
    md.add_argument("--platform")
    md.set_defaults(fn=cmd_md)


def _train_parser(sub) -> None:
    from .pipeline import DEFAULTS
    t = sub.add_parser("train", help="map-only and map+model networks with a variance head: protein-disjoint CV, "
                       "calibration fitted on it, final models, ONNX export (the shipped recipe)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", help="sample files (dataset's output)")
    t.add_argument("--ensembles", help="records of the training proteins (for ANM)")
    t.add_argument("--out", required=True, help="checkpoints, logs, onnx/ and train_<res>A.json")
    t.add_argument("--kinds", help="map (voxel mode's one-channel kind) and/or map+model (structure mode's)")
    t.add_argument("--resolution", type=float, help="filter resolution (Å) of the models")
    t.add_argument("--folds", type=int, help="protein-disjoint CV folds")
    t.add_argument("--cv-minutes", type=float, help="per fold model (0: no CV)")
    t.add_argument("--minutes", type=float, help="final model (0: none)")
    t.add_argument("--max-steps", type=int, help="per model, besides the time budget")
    t.add_argument("--batch", type=int, help="patches per optimizer step")
    t.add_argument("--eval-maps", type=int, help="frame-averaged CV test maps per test protein")
    t.add_argument("--eval-seconds", type=float, help="validation cadence (wall clock)")
    t.add_argument("--init-checkpoint", help="fine-tune from a checkpoint of the same kind (e.g. the 5 Å final "
                   "model for 6 or 7 Å); the fine-tuned model has seen every training protein")
    t.add_argument("--init-cv", help="the cv/ folder of an earlier run with the same folds: fold k starts from its "
                   "fold k model, so a warm-started CV stays protein-disjoint (give --init-checkpoint for the final "
                   "model)")
    t.add_argument("--calibration-from", help="a train_<res>A.json whose CV calibration (sd_scale, weights) the "
                   "exported models take when this run has no CV")
    t.add_argument("--sd-slope", type=float, help="log SD grows by this times the prediction's z-score (md-calibrate "
                   "fits it on real MD after export); sd_scale and coverage are fitted with it on the CV")
    t.add_argument("--sd-power", type=float, help="the head's SD enters to this power (md-calibrate fits it on real "
                   "MD with the slope; 0 ignores the head)")
    t.add_argument("--map-kinds", help="which simulated maps to use (dataset's kinds: map = frame-averaged, dw = "
                   "Debye-Waller, clean = Debye-Waller without confounders)")
    t.add_argument("--fit-map-kinds", help="map-only: the kinds of CV test map voxel mode's weights (packing, normal "
                   "modes of the map) are fitted on, as the mean over kinds (one map of each besides the --eval-maps "
                   "frame-averaged ones); headline metrics and sd_scale stay on the frame-averaged maps")
    t.add_argument("--groups", type=int, help="maps per batch (256 patches split evenly); > 0 trains the variance "
                   "head on each map's errors less the map's offset (0: independent patches, beta-NLL)")
    t.add_argument("--seed", type=int, help="fold k trains with seed SEED + k, the final model with SEED (another "
                   "seed gives another ingredient for `soup`)")
    t.add_argument("--threads", type=int, help="torch threads (two kinds in parallel: 1 each)")
    t.add_argument("--lr", type=float, help="peak learning rate of the cosine schedule (lower for a gentle fine-tune)")
    t.add_argument("--init-onnx", help="start from an exported one-channel FCN; the CV then is not protein-disjoint: "
                   "that model saw every training protein")
    t.set_defaults(fn=cmd_train, **DEFAULTS)
    so = sub.add_parser("soup", help="average runs' checkpoints (B, C... warm-started from A), as a new run")
    so.add_argument("runs", nargs="+", help="RUNS folders A B ... (each with map/ and mapmodel/), or a folder of "
                    "exported models a run started from (e.g. ../onnx_models)")
    so.add_argument("--out", required=True, help="a new RUNS folder; `train --out OUT/map` (and OUT/mapmodel) then "
                    "calibrates and exports it without training")
    so.set_defaults(fn=cmd_soup)
    x = sub.add_parser("export", help="checkpoint -> ONNX with metadata, parity-checked against onnxruntime")
    x.add_argument("checkpoint")
    x.add_argument("--out", required=True)
    x.add_argument("--name")
    x.add_argument("--metrics", help="JSON file with metrics to embed")
    x.set_defaults(fn=cmd_export)
    from .export import add_parser as add_stages  # `stages`: side files for models exported before
    add_stages(sub)
    from .md_units_fit import add_parser as add_md_units  # `md-units`: values in MD units
    add_md_units(sub)
    from .expected_r_fit import add_parser as add_expected_r  # `expected-r`: the per-run expected r with MD
    add_expected_r(sub)
    from .atlas_dataset import add_parser as add_atlas_data  # `atlas-data`: MD-labelled training maps
    add_atlas_data(sub)
    from .md_calibration import add_parser as add_md_calibrate  # `md-calibrate`: weights and SD on real MD
    add_md_calibrate(sub)


def _check_parsers(sub) -> None:
    vm = sub.add_parser("validate-md", help="real-MD yardstick: md_reference chains, raw intensity, ANM, models")
    vm.add_argument("--md-reference", default=str(SHARED / "md_reference"))
    vm.add_argument("--models", nargs="*", default=[str(REPO / "onnx_models")],
                    help="folders of ONNX models (map-only and map+model kinds, chosen by resolution)")
    vm.add_argument("--maps-per-variant", type=int, default=2)
    vm.add_argument("--residue-atoms", choices=["ca", "backbone", "heavy"], default="heavy")
    vm.add_argument("--chains", default="", help="comma-separated subset (default: all)")
    vm.add_argument("--image-maps", type=int, default=2,
                    help="image-formation maps per chain and kind (cross-family; 0: engine maps only)")
    vm.add_argument("--out", default=str(HERE / "reports" / "validate_md"),
                    help="writes OUT.json and OUT.md ('' to print only)")
    vm.add_argument("--docs", nargs="*", help="files whose validate-md block to regenerate "
                    "(docs/validation.md, onnx_models/MODEL_CARD.md)")
    vm.add_argument("--train-json", nargs="*", help="train_<res>A.json files: their CV's ANM-vs-label r goes "
                    "beside the table")
    vm.set_defaults(fn=cmd_validate_md)
    vc = sub.add_parser("validate-md-compare", help="two validate-md results (JSON), one column, paired by chain")
    vc.add_argument("a", type=Path, help="validate-md OUT.json of the models compared against (A)")
    vc.add_argument("b", type=Path, help="validate-md OUT.json of the candidate models (B)")
    vc.add_argument("--column", default="map+model", help="which result: map+model (structure mode, default), map "
                    "(voxel mode), or any per-chain key of the JSON")
    vc.set_defaults(fn=cmd_validate_md_compare)
    ist = sub.add_parser("input-stats", help="diagnostic: the network's input on engine, image and real maps")
    ist.add_argument("--limit", type=int, default=0, help="first N md_reference chains only")
    ist.add_argument("--out", default=str(HERE / "reports" / "input_stats"))
    ist.set_defaults(fn=cmd_input_stats)
    pr = sub.add_parser("prior", help="fit the structure prior to ATLAS MD (atlas_train), CV, export to ONNX")
    pr.add_argument("--atlas-train", default=str(SHARED / "atlas_train"))
    pr.add_argument("--folds", type=int, default=5)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--limit", type=int, default=0, help="first N chains only (smoke runs)")
    pr.add_argument("--out", default=str(REPO / "onnx_models" / "prior" / "structure_prior.onnx"))
    pr.add_argument("--report", default=str(HERE / "reports" / "structure_prior"))
    pr.set_defaults(fn=cmd_prior)
    s = sub.add_parser("smoke", help="tiny end-to-end run (≤ 3 min on 2 cores)")
    s.add_argument("--out", default=str(HERE / "runs" / "smoke"))
    s.add_argument("--no-md", action="store_true")
    s.set_defaults(fn=cmd_smoke)
    ec = sub.add_parser("engine-check", help="diagnostic: label engine vs md_reference, log-RMSF spread and r with ANM")
    ec.add_argument("--ensembles", default=str(DEFAULT_DATA / "ensembles"))
    ec.add_argument("--md-reference", default=str(SHARED / "md_reference"))
    ec.add_argument("--out", default=str(HERE / "reports" / "engine_check.json"))
    ec.set_defaults(fn=cmd_engine_check)
    sp = sub.add_parser("sd-probe", help="diagnostic: which per-residue quantities rank the real-MD errors")
    sp.add_argument("--models", nargs="*", default=[str(REPO / "onnx_models")])
    sp.add_argument("--maps-per-variant", type=int, default=2)
    sp.add_argument("--image-maps", type=int, default=2, help="image-formation maps per chain and kind (the levels)")
    sp.add_argument("--out", default=str(HERE / "reports" / "sd_probe"), help="writes OUT.md and OUT.json")
    sp.set_defaults(fn=cmd_sd_probe)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="defmap-train", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    _data_parsers(sub)
    _train_parser(sub)
    _check_parsers(sub)
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
