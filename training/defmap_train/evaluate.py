"""Protein-disjoint evaluation and the generated report (training/reports/README.md + PNGs + metrics.json).

Every number in the report is measured here on proteins the model being evaluated never saw.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np
from scipy import stats

from .dataset import Item, list_samples, load_item
from .export import load_checkpoint, save_checkpoint
from .train import atom_predictions, is_main, pearson, predict_item, train

LABELS = ("ANM normal-mode ensembles of PDB structures (per-atom RMSF at a sampled temperature), simulated "
          "ensemble-average maps with domain randomization; not MD")


def load_items(paths: list[Path], resolution: float) -> list[Item]:
    return [load_item(p, resolution) for p in paths]


def residue_mean(values: np.ndarray, res_index: np.ndarray) -> np.ndarray:
    ok = np.isfinite(values)
    n = int(res_index.max()) + 1
    s = np.bincount(res_index[ok], values[ok], minlength=n)
    c = np.bincount(res_index[ok], minlength=n)
    with np.errstate(invalid="ignore"):
        return s / np.where(c > 0, c, np.nan)


def split_proteins(proteins: list[str], frac: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) proteins: a deterministic, protein-disjoint split."""
    ps = sorted(proteins, key=lambda p: zlib.crc32(f"{seed}/{p}".encode()))
    n_val = max(1, int(round(frac * len(ps)))) if len(ps) > 1 else 0
    return sorted(ps[n_val:]), sorted(ps[:n_val])


def folds_of(proteins: list[str], k: int) -> list[list[str]]:
    ps = sorted(proteins, key=lambda p: zlib.crc32(f"fold/{p}".encode()))
    return [sorted(ps[i::k]) for i in range(k)]


def train_final(data: Path, out: Path, *, resolution: float, arch: str, minutes: float, init: str | None,
                val_fraction: float, exclude: list[str], seed: int, lr: float = 1e-3,
                sampler: str = "patches") -> Path:
    """The shipped recipe: all proteins but a protein-disjoint validation part (early stopping)."""
    groups = {p: v for p, v in list_samples(data).items() if p not in exclude}
    tr, va = split_proteins(list(groups), val_fraction, seed)
    t_items = load_items([f for p in tr for f in groups[p]], resolution)
    v_items = load_items([groups[p][0] for p in va], resolution)
    init_sd = load_checkpoint(Path(init))[1]["state_dict"] if init else None
    out.mkdir(parents=True, exist_ok=True)
    model, info = train(t_items, v_items, arch=arch, minutes=minutes, init=init_sd, seed=seed, lr=lr, sampler=sampler,
                        log=out / f"train_{resolution:g}A.jsonl")
    info.update({"labels": LABELS, "resolution": resolution, "train_proteins": len(tr), "val_proteins": va,
                 "maps": len(t_items), "init": str(init) if init else None, "lr": lr,
                 "date": time.strftime("%Y-%m-%d")})
    ck = out / f"{arch}_{resolution:g}A.pt"
    if not is_main():  # under torchrun, rank 0 alone checkpoints and prints
        return ck
    save_checkpoint(ck, model, arch, resolution, info)
    print(f"{ck}: best validation atom r {info['best_val_r']:.3f} after {info['steps']} steps ({info['seconds']} s)")
    return ck


# ------------------------------------------------------------------ metrics for one map

def item_metrics(item: Item, center_pred: np.ndarray) -> dict:
    pa = atom_predictions(item, center_pred)
    lab_r = residue_mean(item.log_rmsf, item.res_index)
    m = {"atom_r": pearson(pa, item.log_rmsf), "residue_r": pearson(residue_mean(pa, item.res_index), lab_r)}
    for k, v in item.baselines.items():
        m[f"{k}_atom_r"] = pearson(v.astype(np.float64), item.log_rmsf)
        m[f"{k}_residue_r"] = pearson(residue_mean(v.astype(np.float64), item.res_index), lab_r)
    return m


def tta_metrics(model, item: Item, n_rot: int) -> dict:
    """Rotation test-time augmentation: does the spread over rotations rank the per-residue errors?"""
    preds = np.stack([residue_mean(atom_predictions(item, predict_item(model, item, rotation=r)), item.res_index)
                      for r in range(n_rot)])
    lab = residue_mean(item.log_rmsf, item.res_index)
    mean, spread = preds.mean(axis=0), preds.std(axis=0)
    ok = np.isfinite(mean) & np.isfinite(lab)
    err = np.abs((mean - np.nanmean(mean[ok])) - (lab - np.nanmean(lab[ok])))  # DEFMap reports relative values
    rho = stats.spearmanr(err[ok], spread[ok]).statistic if ok.sum() > 3 else np.nan
    return {"tta_residue_r": pearson(mean, lab), "single_residue_r": pearson(preds[0], lab),
            "spread_error_spearman": float(rho), "mean_spread": float(np.nanmean(spread[ok])),
            "_err": err[ok], "_spread": spread[ok]}


def summarize(per_protein: dict[str, list[dict]]) -> dict:
    """Per protein: mean over its maps; then mean ± SD over proteins."""
    keys = sorted({k for v in per_protein.values() for m in v for k in m if not k.startswith("_")})
    prot = {p: {k: float(np.nanmean([m[k] for m in v if k in m])) for k in keys} for p, v in per_protein.items()}
    out = {"n_proteins": len(prot)}
    for k in keys:
        vals = np.array([prot[p][k] for p in prot])
        out[k] = {"mean": float(np.nanmean(vals)), "sd": float(np.nanstd(vals))}
    return {"summary": out, "per_protein": prot}


# ------------------------------------------------------------------ cross-validation

def fold_checkpoint(a, groups: dict, folds: list[list[str]], res_list: list[float], ri: int, k: int,
                    runs: Path) -> Path:
    """Train fold k at res_list[ri] unless its checkpoint exists (coarser resolutions fine-tune the first's)."""
    res = res_list[ri]
    ck = runs / f"{res:g}A" / f"fold{k}.pt"
    if ck.exists():
        return ck
    test = folds[k]
    tr, va = split_proteins([p for p in groups if p not in test], 0.15, k)
    init = load_checkpoint(fold_checkpoint(a, groups, folds, res_list, 0, k, runs))[1]["state_dict"] if ri else None
    model, info = train(load_items([f for p in tr for f in groups[p]], res),
                        load_items([groups[p][0] for p in va], res), arch=a.arch,
                        minutes=a.minutes if ri == 0 else a.finetune_minutes, init=init, seed=k,
                        log=runs / f"{res:g}A" / f"fold{k}.jsonl", sampler=a.sampler)
    info.update({"test": test, "val": va})
    save_checkpoint(ck, model, a.arch, res, info)
    return ck


def fold_metrics(a, groups: dict, test: list[str], ri: int, res: float, ck: Path, model=None) -> tuple[dict, dict]:
    """Per-map metrics of one fold model on its test proteins, cached next to the checkpoint."""
    cache = ck.with_suffix(f".metrics{a.eval_maps}_{a.tta if ri == 0 else 0}.npz")
    if cache.exists():
        with np.load(cache, allow_pickle=True) as z:
            return z["pp"].item(), z["tta"].item()
    model = model if model is not None else load_checkpoint(ck)[0]
    fold_pp, fold_tta = {}, {}
    for p in test:
        for i, f in enumerate(groups[p][:a.eval_maps if ri == 0 else max(1, a.eval_maps // 2)]):
            it = load_item(f, res)
            fold_pp.setdefault(p, []).append(item_metrics(it, predict_item(model, it)))
            if i == 0 and ri == 0 and a.tta > 1:
                fold_tta.setdefault(p, []).append(tta_metrics(model, it, a.tta))
    np.savez(cache, pp=np.array(fold_pp, dtype=object), tta=np.array(fold_tta, dtype=object))
    return fold_pp, fold_tta


def cross_validate(a, res_list: list[float], runs: Path) -> dict:
    groups = list_samples(Path(a.data))
    folds = folds_of(list(groups), a.folds)
    results: dict = {}
    tta_all: dict = {}
    for ri, res in enumerate(res_list):
        per_protein: dict[str, list[dict]] = {}
        tta_rows: dict[str, list[dict]] = {}
        hist = []
        for k, test in enumerate(folds):
            ck = fold_checkpoint(a, groups, folds, res_list, ri, k, runs)
            model, ckd = load_checkpoint(ck)
            hist.append({k2: v for k2, v in ckd["info"].items() if k2 != "history"})
            fold_pp, fold_tta = fold_metrics(a, groups, test, ri, res, ck, model)
            per_protein.update(fold_pp)
            tta_rows.update(fold_tta)
            print(f"CV {res:g} Å fold {k + 1}/{len(folds)} done", flush=True)
        results[f"{res:g}"] = summarize(per_protein)
        results[f"{res:g}"]["folds"] = hist
        if tta_rows:
            tta_all = summarize(tta_rows)
            tta_all["_pairs"] = [(m["_err"], m["_spread"]) for v in tta_rows.values() for m in v]
    return {"cv": results, "tta": tta_all, "folds": folds}


def reference_comparison(a, runs: Path, res: float) -> dict:
    """DEFMap's reference net vs the FCN on fold 0 with the same (reduced) wall-clock budget."""
    groups = list_samples(Path(a.data))
    test = folds_of(list(groups), a.folds)[0]
    rest = [p for p in groups if p not in test]
    tr, va = split_proteins(rest, 0.15, 0)
    out = {}
    for name, arch, sampler in (("reference", "reference", "patches"), ("fcn", "fcn", "patches"),
                                ("fcn_crops", "fcn", "crops")):
        ck = runs / "reference_cmp" / f"{name}.pt"
        if not ck.exists():
            model, info = train(load_items([f for p in tr for f in groups[p]], res),
                                load_items([groups[p][0] for p in va], res), arch=arch, minutes=a.reference_minutes,
                                seed=0, sampler=sampler, log=runs / "reference_cmp" / f"{name}.jsonl")
            save_checkpoint(ck, model, arch, res, info)
        model, ckd = load_checkpoint(ck)
        cache = ck.with_suffix(".metrics.json")
        if cache.exists():
            per = json.loads(cache.read_text())
        else:
            per = {}
            for p in test:
                it = load_item(groups[p][0], res)
                per[p] = [item_metrics(it, predict_item(model, it))]
            cache.write_text(json.dumps(per))
        s = summarize(per)["summary"]
        out[name] = {"residue_r": s["residue_r"], "atom_r": s["atom_r"],
                     "labelled_patches_seen": ckd["info"]["labelled_patches_seen"], "seconds": ckd["info"]["seconds"]}
    return out


# ------------------------------------------------------------------ shipped models on real data

def predict_with_onnx(model_path: Path, values: np.ndarray, xyz_to_ijk: np.ndarray, xyz: np.ndarray,
                      map_resolution: float | None) -> np.ndarray:
    """Per-atom prediction through the bundle's own code path (preprocess + Predictor)."""
    from chimerax.defmap import preprocess as pp
    from chimerax.defmap.network import Predictor, read_model_info
    info = read_model_info(model_path)
    prep = pp.prepare_points(values, xyz_to_ijk, xyz, info.spec, map_resolution=map_resolution)
    pred = Predictor(info, device="cpu")
    c = pred.predict_dense(prep.grid, prep.centers) if info.fully_convolutional else \
        pred.predict_patches(prep.grid, prep.centers)
    out = np.full(len(xyz), np.nan, dtype=np.float32)
    ok = prep.point_to_center >= 0
    out[ok] = c[prep.point_to_center[ok]]
    return out


def shipped_model_for(models_dir: Path, resolution: float) -> Path | None:
    from chimerax.defmap.network import choose_model, read_model_info
    found = [read_model_info(p) for p in sorted(models_dir.glob("*.onnx"))]
    return choose_model(found, resolution).path if found else None


def emd3488(models_dir: Path) -> dict | None:
    """EMD-3488 (3.2 Å): predictions vs each fitted model's B-factors and ANM fluctuations (5ME2, and 5NI1 whose
    re-refined B-factors vary; 5ME2's are one constant, so a correlation with them is undefined)."""
    from .cli import SHARED
    from .dataset import map_baselines
    from .ensembles import anm_record
    from .maps import read_mrc
    from .structure import load_structure
    emdb = SHARED / "emdb"
    mp = shipped_model_for(models_dir, 3.2)
    if mp is None or not (emdb / "emd_3488.mrc").exists():
        return None
    values, x2i, vs = read_mrc(emdb / "emd_3488.mrc")
    out: dict = {"model": mp.name}
    for fname in ("5me2.pdb", "5ni1_updated.cif"):
        if not (emdb / fname).exists():
            continue
        st = load_structure(emdb / fname)
        pred = predict_with_onnx(mp, values, x2i, st.xyz, 3.2)
        anm = anm_record(st, np.random.default_rng(0), mean_ca_rmsf=1.0, n_frames=0)
        raw = map_baselines(values, x2i, st.xyz, vs)["raw_intensity"]
        pr, b = residue_mean(pred, st.res_index), residue_mean(st.bfactor, st.res_index)
        an, rw = residue_mean(np.log10(anm["rmsf"]), st.res_index), residue_mean(raw, st.res_index)
        ok = np.isfinite(pr)
        const_b = bool(np.nanstd(b) < 1e-6)

        def sp(x, y, ok=ok):
            return float(stats.spearmanr(x[ok], y[ok]).statistic)
        out[st.name] = {"residues": int(ok.sum()), "bfactor_constant": const_b,
                        "bfactor_value": float(np.nanmean(b)) if const_b else None,
                        "pred_vs_bfactor": None if const_b else {"pearson": pearson(pr, b), "spearman": sp(pr, b)},
                        "pred_vs_anm": {"pearson": pearson(pr, an), "spearman": sp(pr, an)},
                        "raw_intensity_vs_bfactor": None if const_b else pearson(rw, b),
                        "raw_intensity_vs_anm": pearson(rw, an),
                        "anm_vs_bfactor": None if const_b else pearson(an, b),
                        "_profile": (pr, b, an, st.res_label)}
    return out


def atlas_chains(md_dir: Path, models_dir: Path, res_list: list[float]) -> dict:
    """The four ATLAS chains (real MD RMSF, never trained on) on maps simulated from them (Debye–Waller)."""
    out = {}
    groups = list_samples(md_dir) if md_dir.exists() else {}
    for res in res_list:
        mp = shipped_model_for(models_dir, res)
        if mp is None or not groups:
            continue
        from chimerax.defmap.network import read_model_info
        if abs(read_model_info(mp).resolution - res) > 1e-6:
            continue
        per = {}
        for p, files in groups.items():
            for f in files:
                it = load_item(f, res)
                per.setdefault(p, []).append(item_metrics(it, _onnx_center_pred(mp, it)))
        out[f"{res:g}"] = summarize(per)
    return out


def _onnx_center_pred(model_path: Path, item: Item) -> np.ndarray:
    from chimerax.defmap.network import Predictor, read_model_info
    from chimerax.defmap.preprocess import Grid
    info = read_model_info(model_path)
    pred = Predictor(info, device="cpu")
    g = Grid(item.grid, np.zeros(3), info.spec.voxel_size)
    return pred.predict_dense(g, item.centers) if info.fully_convolutional else pred.predict_patches(g, item.centers)


# ------------------------------------------------------------------ report

def evaluate(a) -> None:
    res_list = [float(r) for r in a.resolutions.split(",")]
    runs, reports, models = Path(a.runs), Path(a.reports), Path(a.models)
    reports.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cv = cross_validate(a, res_list, runs)
    ref = reference_comparison(a, runs, res_list[0]) if a.reference_minutes > 0 else None
    emd = emd3488(models)
    atlas = atlas_chains(Path(a.md_reference), models, res_list)
    metrics = {f"{r:g}": _model_metrics(cv["cv"][f"{r:g}"]["summary"]) for r in res_list}
    (reports / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    full = {"cv": {k: {kk: vv for kk, vv in v.items()} for k, v in cv["cv"].items()},
            "tta": {k: v for k, v in cv["tta"].items() if not k.startswith("_")}, "folds": cv["folds"],
            "reference_comparison": ref, "emd3488": _strip(emd),
            "atlas": atlas, "seconds": round(time.time() - t0)}
    (reports / "results.json").write_text(json.dumps(full, indent=1, sort_keys=True, default=float))
    _plots(reports, cv, emd, res_list)
    (reports / "README.md").write_text(_markdown(a, cv, ref, emd, atlas, res_list))
    print(f"report written to {reports}")


def _strip(d):
    """JSON-able copy without the private '_' entries."""
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if not str(k).startswith("_")}
    return d


def _model_metrics(s: dict) -> dict:
    f = {k: round(s[k]["mean"], 3) for k in ("residue_r", "atom_r", "raw_intensity_residue_r", "blur_proxy_residue_r")}
    f["n_proteins"] = s["n_proteins"]
    f["what"] = "protein-disjoint CV on simulated randomized maps, mean per-protein Pearson r (labels: ANM, not MD)"
    return f


def _fmt(s: dict, k: str) -> str:
    return f"{s[k]['mean']:.3f} ± {s[k]['sd']:.3f}" if k in s else "–"


def _markdown(a, cv, ref, emd, atlas, res_list) -> str:
    L = ["# DEFMap training report (generated by `defmap-train evaluate`; do not edit by hand)", "",
         f"Labels: {LABELS}. Protein-disjoint {a.folds}-fold cross-validation over {sum(len(f) for f in cv['folds'])} "
         f"proteins (each fold's model never saw its test proteins; early stopping on a further protein-disjoint "
         f"validation part of the training proteins). FCN trained on "
         f"{'single random patches' if a.sampler == 'patches' else 'dense crops'}; "
         f"{a.eval_maps} map(s) per test protein at the first resolution. Training budget per fold: {a.minutes:g} min "
         "of a shared 2-core CPU at "
         f"{res_list[0]:g} Å, then {a.finetune_minutes:g} min fine-tuning from that fold's model at each coarser "
         "resolution. Per-protein Pearson r (mean over the protein's simulated maps), then mean ± SD over proteins.",
         "", "Baselines (same maps, same atoms): *raw intensity* = minus the input map value at the atom (DEFMap "
         "reports r ≈ 0.46 between raw intensity and MD dynamics on real maps: a simulation far above that would be "
         "too easy); *blur proxy* = minus (value at the atom − mean in a 4 Å ball) / map SD, a local sharpness proxy.",
         "", "## Cross-validation (simulated, randomized maps)", "",
         "| model | proteins | residue r (model) | atom r (model) | residue r raw intensity | atom r raw intensity | "
         "residue r blur proxy | model − raw (residue) |", "|---|---|---|---|---|---|---|---|"]
    for r in res_list:
        s = cv["cv"][f"{r:g}"]["summary"]
        gap = s["residue_r"]["mean"] - s["raw_intensity_residue_r"]["mean"]
        L.append(f"| FCN {r:g} Å | {s['n_proteins']} | {_fmt(s, 'residue_r')} | {_fmt(s, 'atom_r')} | "
                 f"{_fmt(s, 'raw_intensity_residue_r')} | {_fmt(s, 'raw_intensity_atom_r')} | "
                 f"{_fmt(s, 'blur_proxy_residue_r')} | {gap:+.3f} |")
    s5 = cv["cv"][f"{res_list[0]:g}"]["summary"]
    ok_r = s5["residue_r"]["mean"] >= 0.75
    ok_b = s5["raw_intensity_residue_r"]["mean"] <= 0.55
    ok_g = s5["residue_r"]["mean"] - s5["raw_intensity_residue_r"]["mean"] >= 0.2
    L += ["", f"Targets at {res_list[0]:g} Å: residue r ≥ 0.75 — {'met' if ok_r else 'NOT met'}; raw-intensity "
          f"baseline ≤ 0.55 — {'met' if ok_b else 'NOT met'}; model beats baseline by ≥ 0.2 — "
          f"{'met' if ok_g else 'NOT met'}.", "", "![per-protein r](cv_per_protein.png)", ""]
    if cv["tta"]:
        t = cv["tta"]["summary"]
        L += ["## Rotation test-time augmentation (uncertainty)", "",
              f"{a.tta} cube rotations on each test protein's first map ({res_list[0]:g} Å fold models). Spread = SD "
              "over rotations of the residue prediction; error = |prediction − label| after removing each protein's "
              "mean offset.", "", "| quantity | mean ± SD over proteins |", "|---|---|",
              f"| residue r, single pass | {_fmt(t, 'single_residue_r')} |",
              f"| residue r, TTA mean | {_fmt(t, 'tta_residue_r')} |",
              f"| Spearman(|error|, spread) | {_fmt(t, 'spread_error_spearman')} |",
              f"| mean spread (log10 Å) | {_fmt(t, 'mean_spread')} |", "",
              "A positive Spearman means the spread ranks errors; a value near 0 means it does not.", "",
              "![uncertainty](tta_uncertainty.png)", ""]
    if ref:
        L += ["## DEFMap reference network vs FCN (reduced budget, fold 0 only)", "",
              f"Each trained for about {a.reference_minutes:g} min wall clock on the same proteins and evaluated on "
              "the first map of each fold-0 test protein: *reference* = DEFMap's network on single random patches "
              "(about 50 patches/s on this CPU); *fcn* = the shipped FCN on single random patches; *fcn_crops* = the "
              "FCN trained densely on random crops (every labelled voxel of a crop, correlated neighbours). This "
              "compares what each achieves on the same small CPU budget, not their capacity.", "",
              "| network | labelled patches seen | residue r | atom r |", "|---|---|---|---|"]
        for k, v in ref.items():
            L.append(f"| {k} | {v['labelled_patches_seen']:,} | {v['residue_r']['mean']:.3f} ± "
                     f"{v['residue_r']['sd']:.3f} | {v['atom_r']['mean']:.3f} ± {v['atom_r']['sd']:.3f} |")
        L.append("")
    L += ["## ATLAS MD chains (real MD RMSF, never trained on)", "",
          "Maps simulated from ATLAS per-residue C-alpha RMSF by Debye–Waller blurring (σ² = σ_res² + RMSF²/3) "
          "with the same randomization; shipped models (ONNX, through the bundle's preprocessing and Predictor).", ""]
    if atlas:
        L += ["| model | chain | residue r (model) | residue r raw intensity | atom r (model) |",
              "|---|---|---|---|---|"]
        for r, v in atlas.items():
            for p, m in v["per_protein"].items():
                L.append(f"| {r} Å | {p} | {m['residue_r']:.3f} | {m['raw_intensity_residue_r']:.3f} | "
                         f"{m['atom_r']:.3f} |")
            s = v["summary"]
            L.append(f"| {r} Å | mean ± SD | {_fmt(s, 'residue_r')} | {_fmt(s, 'raw_intensity_residue_r')} | "
                     f"{_fmt(s, 'atom_r')} |")
    else:
        L.append("(not run: no shipped models or no md_reference samples)")
    L += ["", "## EMD-3488 (real map, 3.2 Å) with 5ME2 and 5NI1", ""]
    if emd:
        L += [f"Model {emd['model']} (the one the bundle chooses for 3.2 Å), through the bundle's preprocessing and "
              "Predictor. No MD exists for this map here; the comparisons are with the deposited B-factors and with "
              "ANM fluctuations (log10 RMSF) of each fitted model, reported as they are. Per-residue Pearson "
              "(Spearman).", "",
              "| fitted model | residues | prediction vs B-factor | prediction vs ANM | raw intensity vs B-factor | "
              "raw intensity vs ANM | ANM vs B-factor |", "|---|---|---|---|---|---|---|"]
        for k, v in emd.items():
            if not isinstance(v, dict):
                continue
            pb = "undefined: all B-factors are " + f"{v['bfactor_value']:.2f}" if v["bfactor_constant"] else \
                f"{v['pred_vs_bfactor']['pearson']:.3f} ({v['pred_vs_bfactor']['spearman']:.3f})"
            rb = "–" if v["bfactor_constant"] else f"{v['raw_intensity_vs_bfactor']:.3f}"
            ab = "–" if v["bfactor_constant"] else f"{v['anm_vs_bfactor']:.3f}"
            L.append(f"| {k.upper()} | {v['residues']} | {pb} | {v['pred_vs_anm']['pearson']:.3f} "
                     f"({v['pred_vs_anm']['spearman']:.3f}) | {rb} | {v['raw_intensity_vs_anm']:.3f} | {ab} |")
        L += ["", "![EMD-3488](emd3488.png)", ""]
    else:
        L.append("(not run: no shipped model or ../shared/data/emdb missing)")
    L += ["## Folds", ""] + [f"- fold {i}: {', '.join(f)}" for i, f in enumerate(cv["folds"])]
    return "\n".join(L) + "\n"


def _plots(reports: Path, cv, emd, res_list) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pp = cv["cv"][f"{res_list[0]:g}"]["per_protein"]
    names = sorted(pp, key=lambda p: pp[p]["residue_r"])
    fig, ax = plt.subplots(figsize=(12, 4))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [pp[p]["residue_r"] for p in names], 0.4, label="FCN (residue r)")
    ax.bar(x + 0.2, [pp[p]["raw_intensity_residue_r"] for p in names], 0.4, label="raw intensity (residue r)")
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylabel("Pearson r")
    ax.set_title(f"Protein-disjoint CV, {res_list[0]:g} Å, simulated randomized maps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(reports / "cv_per_protein.png", dpi=110)
    plt.close(fig)
    if cv["tta"] and cv["tta"].get("_pairs"):
        err = np.concatenate([e for e, _ in cv["tta"]["_pairs"]])
        spr = np.concatenate([s for _, s in cv["tta"]["_pairs"]])
        q = np.quantile(spr, np.linspace(0, 1, 11))
        b = np.clip(np.searchsorted(q, spr, side="right") - 1, 0, 9)
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([np.mean(spr[b == i]) for i in range(10)], [np.mean(err[b == i]) for i in range(10)], "o-")
        ax.set_xlabel("TTA spread (SD over rotations, log10 Å)")
        ax.set_ylabel("mean |error| (log10 Å)")
        ax.set_title("Does the rotation spread rank errors?")
        fig.tight_layout()
        fig.savefig(reports / "tta_uncertainty.png", dpi=110)
        plt.close(fig)
    prof = [v["_profile"] for v in (emd or {}).values() if isinstance(v, dict) and not v["bfactor_constant"]]
    if prof:
        pr, b, an, _ = prof[0]
        z = [(v - np.nanmean(v)) / np.nanstd(v) for v in (pr, np.asarray(b), an)]
        fig, ax = plt.subplots(figsize=(12, 3.5))
        for v, lab in zip(z, ("prediction", "5ME2 B-factor", "ANM log RMSF")):
            ax.plot(v, lw=0.8, label=lab)
        ax.set_xlabel("residue (file order, 4 chains)")
        ax.set_ylabel("z-score")
        ax.legend()
        ax.set_title("EMD-3488 / 5NI1 per-residue profiles (z-scores)")
        fig.tight_layout()
        fig.savefig(reports / "emd3488.png", dpi=110)
        plt.close(fig)
