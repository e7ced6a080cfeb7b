"""The issue-11 recipe: map-only and map + fitted-model networks with a variance head, protein-disjoint CV on the
simulated set, calibration fitted on that CV (never on md_reference), final models and ONNX export.

``defmap-train train2`` runs, for each kind (``map``: one input channel, what voxel mode uses; ``map+model``: the map
and the fitted model's own density from ``chimerax.defmap.preprocess.model_density``, what structure mode uses), a
k-fold protein-disjoint CV (each fold model never sees its test proteins; early stopping on a further protein-disjoint
part), then a final model on all proteins.  Both networks output a mean log10 RMSF and a log-variance (beta-NLL).

From the CV predictions it measures, per protein: residue r of the network, residue r of ANM of the structure (how
much of the labels the structure alone explains), 68 % interval coverage and Spearman(SD, |error|); and fits the
numbers stored in the exported models' metadata under ``calibration``: ``sd_scale`` (the SD multiplier that gives
68 % coverage on the CV), ``contrast_weight`` and ``native_contrast_weight`` (map + model only: weights c and n of
z(model density − map density at the atom on the network's lattice, ``preprocess.density_contrast``) and of z(the
same at the map's own resolution and sampling, ``preprocess.native_contrast``) in structure mode's z(network) +
c z(contrast) + n z(native contrast), fitted together on a grid to maximize the mean CV residue r),
``map_packing_weight`` and ``map_anm_weight`` (map-only: weights k of z(the contour's packing around each voxel,
``map_shape.map_packing``; voxel mode's default) and then e of z(normal modes of the map's own pseudo-atoms,
``nma.map_elastic_network``; voxel mode's ``normalModes``), the contour enclosing the protein's volume, fitted on the
mean over the kinds of test map) and ``anm_weight`` (weight w of z(ANM)
added to structure mode's values with ``normalModes``; 0 means the prior is dropped).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from chimerax.defmap.combination import zscore
from chimerax.defmap.map_shape import RESIDUE_VOLUME, map_packing
from chimerax.defmap.network import calibrated_sd
from chimerax.defmap.nma import anm_log_fluctuations, map_elastic_network
from chimerax.defmap.preprocess import density_contrast, element_weights, native_contrast, rigid_density_at

from .dataset import Item, list_samples, load_item, map_kind
from .evaluate import folds_of, load_items, split_proteins
from .export import export_onnx, load_checkpoint, save_checkpoint
from .train import atom_predictions, pearson, predict_item, train

KINDS = {"map": 1, "map+model": 2}
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)  # w of z(ANM); past 1 the prior outweighs the map
CONTRAST_WEIGHTS = tuple(np.round(np.arange(0.0, 1.01, 0.05), 2))  # c of z(density contrast)
MAP_SHAPE_WEIGHTS = tuple(np.round(np.arange(0.0, 2.01, 0.05), 2))  # k (packing), e (elastic network): map-only
BACKBONE = ("N", "CA", "C", "O")


def residue_values(v: np.ndarray, res_index: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
    ok = np.isfinite(v) if sel is None else np.isfinite(v) & sel
    n = int(res_index.max()) + 1
    s = np.bincount(res_index[ok], v[ok], minlength=n)
    c = np.bincount(res_index[ok], minlength=n)
    with np.errstate(invalid="ignore"):
        return s / np.where(c > 0, c, np.nan)


_ANM: dict[str, tuple[np.ndarray, np.ndarray]] = {}
_RIGID: dict[tuple[str, float], np.ndarray] = {}


def anm_of(name: str, ensembles: Path) -> tuple[np.ndarray, np.ndarray]:
    """(per-residue log ANM fluctuation, per-atom backbone mask) of a training protein's structure."""
    if name not in _ANM:
        from .ensembles import load_record, record_structure
        rec = load_record(Path(ensembles) / f"{name}.npz")
        st = record_structure(rec)
        _ANM[name] = (anm_log_fluctuations(st.xyz[st.ca_index()]), np.isin(st.atom_name, BACKBONE))
    return _ANM[name]


def native_of(it: Item, ensembles: Path, filter_resolution: float) -> np.ndarray:
    """Per-atom contrast at the map's own resolution (``preprocess.native_contrast``) of a sample, as structure mode
    computes it: the map's value at each atom (the sample's raw intensity, read on the simulated map's own grid)
    against the fitted model's rigid density at the map's resolution when it was given, else at the network's."""
    from .ensembles import load_record
    with np.load(it.path, allow_pickle=False) as z:
        given = bool(z["resolution_given"]) if "resolution_given" in z.files else False
        res = float(z["resolution"]) if given else float(filter_resolution)
    key = (it.protein, round(res, 6))
    if key not in _RIGID:
        rec = load_record(Path(ensembles) / f"{it.protein}.npz")
        _RIGID[key] = rigid_density_at(np.asarray(rec["xyz"], dtype=np.float64), element_weights(rec["element"]), res)
        if len(_RIGID) > 256:  # a bounded cache: the CV visits each protein's maps together
            _RIGID.pop(next(iter(_RIGID)))
    return native_contrast(-np.asarray(it.baselines["raw_intensity"], dtype=np.float64), _RIGID[key])


def item_rows(model, it: Item, ensembles: Path, sd_slope: float = 0.0, sd_power: float = 1.0,
              filter_resolution: float = 5.0) -> dict:
    """Per-map metrics of one test map (residue level = mean over backbone atoms, the md_reference winner).  The SD
    is the head's to the power sd_power, times exp(sd_slope x the prediction's z-score over the map's centres), as
    the bundle reports it before sd_scale."""
    mu = predict_item(model, it)
    lv = predict_item(model, it, output=1)
    sd_c = calibrated_sd(np.exp(0.5 * lv), mu, {"sd_slope": sd_slope, "sd_power": sd_power})
    ok = np.isfinite(it.labels)
    anm, bb = anm_of(it.protein, ensembles)
    pa, sa = atom_predictions(it, mu), atom_predictions(it, sd_c)
    pr = residue_values(pa, it.res_index, bb)
    sr = residue_values(sa, it.res_index, bb)
    lab = residue_values(it.log_rmsf, it.res_index, bb)
    if it.model_grid is not None and getattr(model, "in_channels", 1) == 2:
        con = residue_values(atom_predictions(it, density_contrast(it.grid, it.model_grid, it.centers)),
                             it.res_index, bb)
        nat = residue_values(native_of(it, ensembles, filter_resolution), it.res_index, bb)
        man = pak = np.full_like(pr, np.nan)
    else:  # map-only: voxel mode's packing and elastic network of the map, the contour enclosing the protein's volume
        con = nat = np.full_like(pr, np.nan)
        n_vox = int(round((int(it.res_index.max()) + 1) * RESIDUE_VOLUME / 1.5 ** 3))
        man = residue_values(atom_predictions(it, map_elastic_network(it.grid, n_vox, 1.5, it.centers)),
                             it.res_index, bb)
        pak = residue_values(atom_predictions(it, map_packing(it.grid, n_vox, 1.5, it.centers)), it.res_index, bb)
    good = np.isfinite(pr) & np.isfinite(lab) & np.isfinite(anm)
    a, b = np.polyfit(pr[good], lab[good], 1)
    err = np.abs(lab[good] - (a * pr[good] + b))
    return {"protein": it.protein, "map_kind": map_kind(it.path), "residue_r": pearson(pr, lab),
            "anm_r": pearson(anm, lab),
            "atom_r": pearson(pa, it.log_rmsf), "sd_spearman": float(stats.spearmanr(sr[good], err).statistic),
            "z_abs": (np.abs(it.labels[ok] - mu[ok]) / sd_c[ok]).tolist(),  # centre voxels, absolute scale
            "_res": (pr[good], anm[good], lab[good], con[good], nat[good], man[good], pak[good])}


def summarize(all_rows: list[dict], sd_scale: float = 1.0) -> dict:
    """CV metrics and the fitted calibration.  The headline metrics, sd_scale and structure mode's weights come from
    the frame-averaged test maps (map kind "map"); voxel mode's weights are fitted on the mean over every kind of test
    map there is (frame-averaged, Debye-Waller, clean), since a term that fits one kind can cost another (round 9:
    the map's normal modes at 0.95 cost clean real-MD maps)."""
    rows = [r for r in all_rows if r.get("map_kind", "map") == "map"] or all_rows
    per: dict[str, list[dict]] = {}
    for r in rows:
        per.setdefault(r["protein"], []).append(r)
    out = {"proteins": len(per)}
    for k in ("residue_r", "anm_r", "atom_r", "sd_spearman"):
        v = [np.nanmean([r[k] for r in rs]) for rs in per.values()]
        out[k] = float(np.nanmean(v))
        out[k + "_sd"] = float(np.nanstd(v))
    z = np.concatenate([np.asarray(r["z_abs"]) for r in rows])
    out["coverage68_raw"] = float(np.mean(z <= 1.0))
    out["sd_scale"] = float(np.quantile(z, 0.6827))
    out["coverage68_calibrated"] = float(np.mean(z <= out["sd_scale"]))

    def mean_r(rs, of=rows):  # one value per row of ``of``: mean over proteins, as residue_r
        per_p: dict[str, list[float]] = {}
        for r, v in zip(of, rs):
            per_p.setdefault(r["protein"], []).append(v)
        return float(np.nanmean([np.nanmean(v) for v in per_p.values()]))

    def mean_r_of(rs: list[dict], k_: float, e_: float) -> float:  # z(network) + k z(packing) + e z(map ANM)
        return mean_r([pearson(zscore(p) + k_ * np.nan_to_num(zscore(pak)) + e_ * np.nan_to_num(zscore(man)), lab)
                       for r in rs for p, _, lab, _, _, man, pak in [r["_res"]]], rs)

    c, n, best_r = 0.0, 0.0, -np.inf
    if all(np.isfinite(r["_res"][3]).all() for r in rows):  # two-channel model: fit the contrasts' weights first
        table = {}
        for c_ in CONTRAST_WEIGHTS:
            for n_ in CONTRAST_WEIGHTS:
                table[c_, n_] = mean_r([pearson(zscore(p) + c_ * zscore(con) + n_ * zscore(nat), lab)
                                        for r in rows for p, _, lab, con, nat, _, _ in [r["_res"]]])
                if table[c_, n_] > best_r + 1e-9:
                    c, n, best_r = float(c_), float(n_), table[c_, n_]
        for c_ in CONTRAST_WEIGHTS:  # the lattice contrast alone, and the native one at the fitted lattice weight
            out[f"contrast_c{c_:g}_residue_r"] = table[c_, 0.0]
            out[f"native_n{c_:g}_residue_r"] = table[c, c_]
    out["contrast_weight"], out["native_contrast_weight"] = c, n
    out["residue_r_with_contrast"] = best_r if np.isfinite(best_r) else out["residue_r"]
    k, e = 0.0, 0.0
    if any(np.isfinite(r["_res"][5]).any() or np.isfinite(r["_res"][6]).any() for r in all_rows):
        # map-only: the weight of the map's packing, then of its normal modes
        kinds = sorted({r.get("map_kind", "map") for r in all_rows})

        def over_kinds(k_: float, e_: float) -> float:  # mean over map kinds of the mean over proteins
            return float(np.mean([mean_r_of([r for r in all_rows if r.get("map_kind", "map") == mk], k_, e_)
                                  for mk in kinds]))
        out["map_kinds_fitted_on"] = kinds
        out["residue_r_map_kinds"] = over_kinds(0.0, 0.0)
        best = -np.inf
        for k_ in MAP_SHAPE_WEIGHTS:
            out[f"map_packing_k{k_:g}_residue_r"] = m = over_kinds(k_, 0.0)
            if m > best + 1e-9:
                k, best = float(k_), m
        out["residue_r_with_packing"] = best
        best = -np.inf
        for e_ in MAP_SHAPE_WEIGHTS:  # NaN terms count as 0: where the map gave no network, voxel mode keeps the rest
            out[f"map_anm_e{e_:g}_residue_r"] = m = over_kinds(k, e_)
            if m > best + 1e-9:
                e, best = float(e_), m
        out["residue_r_with_map_anm"] = best
    out["map_packing_weight"] = k
    out["map_anm_weight"] = e
    best = None
    for w in WEIGHTS:
        rs = [pearson(zscore(zscore(p) + (c * zscore(con) if c else 0.0) + (n * zscore(nat) if n else 0.0))
                      + w * zscore(an), lab)
              for r in rows for p, an, lab, con, nat, _, _ in [r["_res"]]]
        m = mean_r(rs)
        out[f"zsum_w{w:g}_residue_r"] = m
        if best is None or m > best[1] + 1e-9:
            best = (w, m)
    out["anm_weight"] = best[0]
    return out


def init_from_onnx(path: Path, in_channels: int, outputs: int, logvar0: float = -3.8) -> dict:
    """A state dict for build('fcn', in_channels, outputs) from an exported one-channel FCN: its weights read the map
    channel, the model channel starts at zero weight, the log-variance output at zero weight and bias ``logvar0``."""
    import onnx
    import torch
    from onnx import numpy_helper
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(str(path)).graph.initializer}
    first = w["net.0.weight"]
    if in_channels > first.shape[1]:
        pad = torch.zeros(first.shape[0], in_channels - first.shape[1], *first.shape[2:])
        w["net.0.weight"] = torch.cat([first, pad], dim=1)
    last = max(int(k.split(".")[1]) for k in w)
    if outputs > w[f"net.{last}.weight"].shape[0]:
        lw, lb = w[f"net.{last}.weight"], w[f"net.{last}.bias"]
        w[f"net.{last}.weight"] = torch.cat([lw, torch.zeros(outputs - lw.shape[0], *lw.shape[1:])])
        w[f"net.{last}.bias"] = torch.cat([lb, torch.full((outputs - lb.shape[0],), logvar0)])
    return w


def run(a) -> dict:
    data, out, ens = Path(a.data), Path(a.out), Path(a.ensembles)
    out.mkdir(parents=True, exist_ok=True)
    # the kinds of map asked for (file PROTEIN__KINDn.npz), each protein's frame maps (*__map*) first: CV test maps,
    # validation and sd_scale stay on that kind
    map_kinds = set(a.map_kinds.split(","))
    groups = {p: sorted((f for f in fs if map_kind(f) in map_kinds),
                        key=lambda f: ("__map" not in f.name, f.name)) for p, fs in list_samples(data).items()}
    proteins = sorted(groups)
    folds = folds_of(proteins, a.folds)
    res = float(a.resolution)
    results: dict = {"command": "defmap-train " + " ".join(sys.argv[1:]), "folds": folds, "kinds": {}}
    kinds = a.kinds.split(",")
    results["init"] = a.init_onnx or a.init_checkpoint or None
    if a.init_cv:
        results["init_cv"] = a.init_cv
    if a.init_onnx and a.init_checkpoint:
        raise SystemExit("give --init-onnx or --init-checkpoint, not both")
    if a.init_checkpoint and len(kinds) != 1:
        raise SystemExit("--init-checkpoint fine-tunes one kind: give --kinds too")
    borrowed = json.loads(Path(a.calibration_from).read_text())["kinds"] if a.calibration_from else {}
    for kind in kinds:
        ch = KINDS[kind]
        init = init_from_onnx(Path(a.init_onnx), ch, 2) if a.init_onnx else None
        if a.init_checkpoint:  # fine-tune (e.g. 6 and 7 Å from the 5 Å final model of the same kind)
            init = load_checkpoint(Path(a.init_checkpoint))[0].state_dict()
        rows = []
        for k, test in enumerate(folds if a.cv_minutes > 0 else []):
            ck = out / "cv" / f"{kind}_fold{k}.pt"
            if ck.exists():
                model = load_checkpoint(ck)[0]
            else:
                fold_init = init
                if a.init_cv:  # fold k from the earlier run's fold k: each fold model still never saw its test set
                    prev = Path(a.init_cv) / f"{kind}_fold{k}.pt"
                    prev_folds = json.loads((Path(a.init_cv).parent / f"train2_{res:g}A.json").read_text())["folds"]
                    if prev_folds != folds:
                        raise SystemExit(f"{a.init_cv}: its folds differ from this run's, so the CV would leak")
                    fold_init = load_checkpoint(prev)[0].state_dict()
                rest = [p for p in proteins if p not in test]
                tr, va = split_proteins(rest, 0.15, k)
                model, info = train(load_items([f for p in tr for f in groups[p]], res),
                                    load_items([groups[p][0] for p in va], res), minutes=a.cv_minutes, seed=a.seed + k,
                                    channels=ch, outputs=2, log=out / "cv" / f"{kind}_fold{k}.jsonl", init=fold_init,
                                    eval_seconds=a.eval_seconds, threads=a.threads, groups=a.groups)
                save_checkpoint(ck, model, "fcn", res, {k2: v for k2, v in info.items() if k2 != "history"})
                print(f"{kind} fold {k}: {info['steps']} steps, best val r {info['best_val_r']:.3f}", flush=True)
            for p in test:
                for f in cv_test_maps(groups[p], a.eval_maps, a.fit_map_kinds.split(",") if kind == "map" else []):
                    rows.append(item_rows(model, load_item(f, res), ens, a.sd_slope, a.sd_power, res))
        summ = summarize(rows) if rows else {}
        if summ:
            summ["sd_slope"], summ["sd_power"] = a.sd_slope, a.sd_power
        fitted_on = "protein-disjoint CV of the simulated training set (not md_reference)"
        if not summ and kind in borrowed:  # no CV at this resolution: the calibration of the run it comes from
            summ = dict(borrowed[kind].get("cv", {}))
            fitted_on += f", at the resolution of {a.calibration_from}"
        results["kinds"][kind] = {"cv": summ}
        if summ:
            print(f"{kind} CV: residue r {summ['residue_r']:.3f} (ANM of the structure {summ['anm_r']:.3f}), "
                  f"coverage68 {summ['coverage68_raw']:.3f} (sd_scale {summ['sd_scale']:.2f}), "
                  f"Spearman(SD,|err|) {summ['sd_spearman']:.3f}, contrast_weight {summ['contrast_weight']}, "
                  f"native_contrast_weight {summ.get('native_contrast_weight', 0.0)} "
                  f"(residue r {summ['residue_r_with_contrast']:.3f}), anm_weight {summ['anm_weight']}, "
                  f"map_packing_weight {summ.get('map_packing_weight', 0.0)}"
                  + (f" (residue r over map kinds {summ['residue_r_map_kinds']:.3f} -> "
                     f"{summ['residue_r_with_packing']:.3f})" if "residue_r_with_packing" in summ else "")
                  + f", map_anm_weight {summ.get('map_anm_weight', 0.0)}"
                  + (f" (residue r {summ['residue_r_with_map_anm']:.3f})" if "residue_r_with_map_anm" in summ else ""),
                  flush=True)
        ckf = out / f"{kind}_{res:g}A.pt"
        if a.minutes > 0 and not ckf.exists():
            tr, va = split_proteins(proteins, 0.15, 0)
            model, info = train(load_items([f for p in tr for f in groups[p]], res),
                                load_items([groups[p][0] for p in va], res), minutes=a.minutes, seed=a.seed,
                                channels=ch, outputs=2, log=out / f"{kind}_{res:g}A.jsonl", init=init,
                                eval_seconds=a.eval_seconds, threads=a.threads, groups=a.groups)
            save_checkpoint(ckf, model, "fcn", res, {k2: v for k2, v in info.items() if k2 != "history"})
            print(f"{kind} final: {info['steps']} steps, best val r {info['best_val_r']:.3f}", flush=True)
        if ckf.exists():
            model, ck = load_checkpoint(ckf)
            cal = {"sd_scale": summ.get("sd_scale", 1.0), "anm_weight": summ.get("anm_weight", 0.0),
                   "contrast_weight": summ.get("contrast_weight", 0.0),
                   "native_contrast_weight": summ.get("native_contrast_weight", 0.0),
                   "map_anm_weight": summ.get("map_anm_weight", 0.0),
                   "map_packing_weight": summ.get("map_packing_weight", 0.0),
                   "sd_slope": summ.get("sd_slope", 0.0), "sd_power": summ.get("sd_power", 1.0),
                   "fitted_on": fitted_on}
            if cal["sd_slope"] or cal["sd_power"] != 1.0:
                cal["sd_slope_fitted_on"] = ("the 17 md_reference chains (defmap-train validate-md, sd_slope and "
                                             "sd_power); "
                                             "sd_scale was fitted after it")
            metrics = {k2: v for k2, v in summ.items() if not k2.startswith("_")}
            name = f"defmap-{'mapmodel-' if ch == 2 else ''}{res:g}A"  # map-only keeps the old names (defmap-5A)
            dst = out / "onnx" / f"{name.replace('-', '_')}.onnx"  # as shipped: defmap_5A.onnx, defmap_mapmodel_5A.onnx
            dev = export_onnx(model, dst, name, res, metrics=metrics,
                              training={k2: v for k2, v in ck.get("info", {}).items() if k2 != "history"},
                              description=_describe(ch, res), extra={"calibration": cal})
            print(f"{dst}: parity {dev:.1e}", flush=True)
    (out / f"train2_{res:g}A.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    return results


def cv_test_maps(files: list[Path], eval_maps: int, other_kinds: list[str]) -> list[Path]:
    """A test protein's CV maps: its first ``eval_maps`` files (frame-averaged first), and one map of each other kind
    in ``other_kinds`` (map-only: voxel mode's weights are fitted over the kinds, see :func:`summarize`)."""
    out = list(files[:eval_maps])
    have = {map_kind(f) for f in out}
    for mk in other_kinds:
        out += [f for f in files if map_kind(f) == mk][:1] if mk not in have else []
    return out


def _describe(channels: int, res: float) -> str:
    inp = "the map and the fitted model's own density (two channels)" if channels == 2 else "the map alone"
    return (f"fully convolutional DEFMap variant for maps at about {res:g} Å or better, input {inp}; outputs mean "
            "log10 RMSF (Å) and its log-variance. Trained on simulated maps of ANM ensembles with per-protein "
            "deviations only the map shows (not MD): see MODEL_CARD.md")


def add_parser(sub, default_data: str, default_ens: str) -> None:
    t = sub.add_parser("train2", help="map-only and map+model networks with a variance head: CV, final, export")
    t.add_argument("--data", default=default_data)
    t.add_argument("--ensembles", default=default_ens, help="records of the training proteins (for ANM)")
    t.add_argument("--out", required=True)
    t.add_argument("--kinds", default="map+model,map")
    t.add_argument("--resolution", type=float, default=5.0)
    t.add_argument("--folds", type=int, default=3)
    t.add_argument("--cv-minutes", type=float, default=3.5, help="per fold model (0: no CV)")
    t.add_argument("--minutes", type=float, default=5.0, help="final model (0: none)")
    t.add_argument("--eval-maps", type=int, default=2)
    t.add_argument("--eval-seconds", type=float, default=60.0, help="validation cadence (wall clock)")
    t.add_argument("--init-checkpoint", help="fine-tune from a train2 checkpoint of the same kind (e.g. the 5 Å "
                   "final model for 6 or 7 Å); the fine-tuned model has seen every training protein")
    t.add_argument("--init-cv", help="the cv/ folder of an earlier train2 run with the same folds: fold k starts "
                   "from its fold k model, so a warm-started CV stays protein-disjoint (give --init-checkpoint for "
                   "the final model)")
    t.add_argument("--calibration-from", help="a train2_<res>A.json whose CV calibration (sd_scale, anm_weight) "
                   "the exported models take when this run has no CV")
    t.add_argument("--sd-slope", type=float, default=0.0, help="log SD grows by this times the prediction's z-score "
                   "(fitted on real MD by validate-md); sd_scale and coverage are fitted with it on the CV")
    t.add_argument("--sd-power", type=float, default=1.0, help="the head's SD enters to this power (fitted on real "
                   "MD by validate-md with the slope; 0 ignores the head)")
    t.add_argument("--map-kinds", default="map,dw,clean", help="which simulated maps to use (dataset's kinds: map = "
                   "frame-averaged, dw = Debye-Waller, clean = Debye-Waller without confounders); round 3 used map")
    t.add_argument("--fit-map-kinds", default="map,dw,clean", help="map-only: the kinds of CV test map voxel "
                   "mode's weights (packing, normal modes of the map) are fitted on, as the mean over kinds (one map "
                   "of each besides the --eval-maps frame-averaged ones); headline metrics and sd_scale stay on the "
                   "frame-averaged maps")
    t.add_argument("--groups", type=int, default=0, help="maps per batch (256 patches split evenly); > 0 trains the "
                   "variance head on each map's errors less the map's offset (0: independent patches, beta-NLL)")
    t.add_argument("--seed", type=int, default=0, help="fold k trains with seed SEED + k, the final model with SEED "
                   "(another seed gives another ingredient for `soup`)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (two kinds in parallel: 1 each)")
    t.add_argument("--init-onnx", help="start from an exported one-channel FCN (e.g. the shipped 5 Å model); the "
                   "CV then is not fully protein-disjoint: that model saw every training protein (old labels)")
    t.set_defaults(fn=lambda a: run(a))
