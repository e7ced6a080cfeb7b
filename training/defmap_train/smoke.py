"""End-to-end smoke test on tiny data (≤ 3 min on 2 cores): ensembles, maps, dataset, one short training run, ONNX
export with torch-vs-onnxruntime parity, the bundle's own predictor on the exported model, the shipped recipe
(``defmap-train train``: CV, calibration, final models of both kinds, export) at a few steps per model, and a few MD
steps."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .paths import SHARED, write_json

SMOKE_PROTEINS = ("5pti", "1fas", "1orc")


def smoke(out: Path, md: bool = True) -> dict:
    from chimerax.defmap import preprocess as pp
    from chimerax.defmap.network import Predictor, read_model_info

    from .dataset import list_samples, load_item, make_sample, spec_for
    from .ensembles import anm_record, record_from_residue_table, save_record
    from .export import export_onnx
    from .maps import simulate_map
    from .model import build
    from .structure import load_structure
    from .train import predict_item, train
    t0 = time.time()
    sdir = SHARED / "structures"
    if not sdir.is_dir():
        raise SystemExit(f"smoke needs the shared structures at {sdir} (../shared/data beside the repository)")
    out.mkdir(parents=True, exist_ok=True)
    samples = out / "samples"
    samples.mkdir(exist_ok=True)
    report: dict = {}
    for i, name in enumerate(SMOKE_PROTEINS):
        path = next(sdir.glob(f"{name}.*"))
        rec = anm_record(load_structure(path), np.random.default_rng(i), n_frames=20)
        save_record(rec, out / "ensembles" / f"{name}.npz")
        for k in range(2):
            rng = np.random.default_rng(10 * i + k)
            sim = simulate_map(rec, rng, resolution=4.0 + k)
            x2i, _ = pp.grid_transforms(sim.origin, (sim.voxel_size,) * 3)
            np.savez(samples / f"{name}__map{k}.npz",
                     **make_sample(sim.values, x2i, sim.voxel_size, rec, sim.resolution, rng, (5.0,)))
    report["data_s"] = round(time.time() - t0, 1)
    mdref = SHARED / "md_reference" / "1ab1_A.pdb"
    if mdref.exists():  # RMSF-table source: Debye–Waller map
        rec = record_from_residue_table(mdref, mdref.with_suffix(".rmsf_nm.txt"))
        sim = simulate_map(rec, np.random.default_rng(0), resolution=5.0)
        report["debye_waller_map_shape"] = list(sim.values.shape)
    groups = list_samples(samples)
    tr = [load_item(f, 5.0) for p in SMOKE_PROTEINS[:2] for f in groups[p]]
    va = [load_item(groups[SMOKE_PROTEINS[2]][0], 5.0)]
    model, info = train(tr, va, minutes=0.5, max_steps=12, batch=4, crop=12, eval_every=6)
    report["train"] = {k: v for k, v in info.items() if k != "history"}
    _, crops = train(tr, va, minutes=0.5, max_steps=4, batch=2, crop=12, eval_every=4, sampler="crops")
    report["train_crops_steps"] = crops["steps"]
    onnx_path = out / "smoke_fcn_5A.onnx"
    report["parity_fcn"] = export_onnx(model, onnx_path, "smoke-5A", 5.0, metrics={"smoke": True})
    ref = build("reference").eval()
    report["parity_reference"] = export_onnx(ref, out / "smoke_reference_5A.onnx", "smoke-ref-5A", 5.0)
    mi = read_model_info(onnx_path)  # the bundle's reader and predictor on the exported file
    assert mi.fully_convolutional and mi.spec == spec_for(5.0), mi
    pred = Predictor(mi, device="cpu")
    from chimerax.defmap.preprocess import Grid
    it = va[0]
    ort_c = pred.predict_dense(Grid(it.grid, np.zeros(3), 1.5), it.centers)
    report["bundle_vs_torch"] = float(np.abs(ort_c - predict_item(model, it)).max())
    assert report["bundle_vs_torch"] <= 1e-5, report["bundle_vs_torch"]
    report["recipe"] = _recipe_smoke(samples, out / "ensembles", out / "recipe")
    if md:
        report["md"] = _md_smoke(sdir / "5pti.cif", out / "md")
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / "smoke.json", report)
    print(json.dumps(report, indent=1, default=float))
    return report


def _recipe_smoke(samples: Path, ensembles: Path, out: Path) -> dict:
    """``defmap-train train`` on the tiny set: a 3-fold CV of one-protein folds, the calibration fitted on it, final
    models of both kinds and their ONNX files, which the bundle reads with that calibration."""
    from chimerax.defmap.network import read_model_info

    from .pipeline import config, run, run_json
    t = time.time()
    res = run(config(out, data=str(samples), ensembles=str(ensembles), cv_minutes=0.5, minutes=0.5, max_steps=2,
                     batch=16, eval_maps=1, eval_seconds=3600.0))
    rep: dict = {"json": run_json(out, 5.0).exists()}
    for kind, name in (("map", "defmap_5A"), ("map+model", "defmap_mapmodel_5A")):
        cv = res["kinds"][kind]["cv"]
        mi = read_model_info(out / "onnx" / f"{name}.onnx")
        assert mi.calibration["sd_scale"] == cv["sd_scale"] and cv["proteins"] == len(SMOKE_PROTEINS), (mi, cv)
        assert mi.needs_structure == (kind == "map+model") and mi.has_variance, mi
        rep[kind] = {"residue_r": cv["residue_r"], "sd_scale": cv["sd_scale"], "fitted_on": mi.calibration["fitted_on"]}
    rep["seconds"] = round(time.time() - t, 1)
    return rep


def _md_smoke(pdb: Path, out: Path) -> dict | str:
    try:
        import mdtraj  # noqa: F401
        import openmm  # noqa: F401
        import pdbfixer  # noqa: F401
    except ImportError as e:
        msg = f"MD skipped: {e.name} is not installed (pip install -r training/requirements.txt)"
        print(msg)
        return msg
    from .ensembles import record_from_trajectory, run_openmm
    t = time.time()
    kw = {"report_every": 10, "solvent": "implicit", "max_residues": 12, "minimize_iterations": 20}
    dcd = run_openmm(pdb, out, steps=40, **kw)
    first = time.time() - t
    dcd = run_openmm(pdb, out, steps=60, **kw)  # resumes from the checkpoint
    rec = record_from_trajectory(dcd, out / "prepared.pdb", name="5pti")
    return {"frames": len(rec["frames"]), "atoms": len(rec["xyz"]), "mean_rmsf": float(rec["rmsf"].mean()),
            "seconds": round(time.time() - t, 1), "first_run_s": round(first, 1)}
