"""``defmap-train md-calibrate``: fit how the bundle combines and qualifies the networks' values on real MD.

Everything here is fitted on the 66 atlas_train chains' engine maps (``atlas_eval``: hard and clean, in-family maps)
with their ATLAS MD as the truth; md_reference is never read, and validate-md then measures the result on both map
families.  In order, each step on the values the previous one left:

0. **The sharpness** (``--steps sharpness``): the spectrum slope sharper maps are blurred down to before anything
   else (``preprocess.match_sharpness``), per mode on SHARPNESS_SLOPES, the one with the largest mean per-residue r
   with MD (structure mode for the map + model models, voxel mode for the map-only ones).  The networks were
   trained on unsharpened engine maps, as the engine makes them (training does not blur them); deposited maps are
   sharpened, so the slope is fitted afterwards, for the trained networks, and a retrained network needs it refitted.
1. **The combination weights** — structure mode's density contrasts (c on the network's lattice, n at the map's
   resolution), voxel mode's contour packing (k) and the map's own intensity at each voxel (w): each on the grid the
   simulated CV uses (``calibration.py``), the value that maximizes the mean per-residue r with MD (mean over
   chains, then over hard and clean maps) with the mode's other weights at the models' current values.  Only the
   weights named in ``--write-weights`` are written: a weight ships only where it also holds on the
   image-formation maps, which validate-md measures afterwards.
2. **The SD** — head SD^p x sd_scale x exp(b x the prediction's z-score + c x its disagreement with the model's
   packing) x the run factor (``network.calibrated_sd``): on real MD flexible residues are predicted less surely,
   which the variance head (trained on simulated labels) does not know; where prediction and packing disagree one
   of them is wrong; and a run expected to track MD less closely errs more on every residue (the run factor,
   ``expected.error_factor`` at the run's expected r times the spread of its values).  Per model kind, (b, p, c) by
   maximum likelihood of the residue errors (each map's scale profiled out), then ``sd_scale`` so that ±SD covers
   68 % of them in the network's units (errors after each map's line of MD on the prediction, the SD times that
   line's slope).  The disagreement (``--sd-disagreement``) and the run factor (``--sd-run expected_r``) are off
   by default: tried on md_reference, they did not hold (``training/reports/sd_run.md``).
3. ``md-units`` and ``expected-r`` refitted on the result (``md_units.json``, ``expected_r.json``).

Steps 1 and 2 are written into the ``calibration`` of every ONNX model of the kind in ``--models`` (its shared-feature
side file, keyed on the model file, is rewritten).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from chimerax.defmap import preprocess as pp
from chimerax.defmap.combination import zscore
from chimerax.defmap.expected import packing_disagreement, residue_packing
from chimerax.defmap.network import calibrated_sd
from chimerax.defmap.recipe import centre_xyz, run_factor_from, sharpness_slope, structure_input

from .atlas_eval import CACHE as ATLAS_CACHE
from .atlas_eval import all_results, cached_arrays, chain_maps, models_key, per_residue
from .atlas_train import chains, load_chain
from .calibration import CONTRAST_WEIGHTS, MAP_SHAPE_WEIGHTS
from .paths import repo_relative, write_json
from .validate_md import (
    line_errors,
    load_models,
    pearson,
    pick,
    residue_values,
    sd_and_errors,
    sd_bands,
    structure_mode,
    voxel_mode,
)

SLOPES = np.round(np.arange(-1.0, 2.01, 0.05), 2)
POWERS = (0.0, 0.25, 0.5, 0.75, 1.0)  # of the head's SD: 0 ignores the head, 1 takes it as it is
DISAGREEMENTS = np.round(np.arange(0.0, 1.01, 0.05), 2)  # weight of the disagreement with the model's packing
GRID = [(float(b), p) for p in POWERS for b in SLOPES]
FIT_VARIANTS = ("hard", "clean")
FITTED_ON = ("the 66 atlas_train chains' hard and clean engine maps with ATLAS MD (defmap-train md-calibrate), never "
             "md_reference")
WEIGHTS_CACHE = ATLAS_CACHE / "weights"


def chain_terms(name: str, models) -> list[dict]:
    """Per map of the chain: per residue the truth and, z-scored, the terms each mode combines (structure mode:
    network, lattice contrast, native contrast; voxel mode: network, contour packing and the map's own intensity at
    the voxels, read at the atoms)."""
    def make() -> dict[str, np.ndarray]:
        st, rmsf = load_chain(name)
        arrays = {"truth": np.log10(rmsf)}
        for i, m in enumerate(chain_maps(name)):
            res, xyz = float(m["resolution"]), np.asarray(m["xyz"], dtype=np.float64)
            arrays[f"{i}|variant"] = np.array(str(m["variant"]))
            info = pick(models, res, True)
            if info is not None:
                sm = structure_mode(info, st, m, "backbone", normal_modes=False, md_units=False)
                for k in ("network", "contrast", "native_contrast"):
                    if k in sm:
                        arrays[f"{i}|{k}"] = zscore(sm[k])
            info = pick(models, res, False)
            if info is not None:
                vp = voxel_mode(info, m, None)
                x2i, _ = pp.grid_transforms(m["origin"], (float(m["voxel_size"]),) * 3)
                intensity = vp.term_values.get("intensity")  # the recipe's, on the map as it scored it
                if intensity is None:  # not combined at weight 0: the same term, read here
                    blurred, _ = pp.match_sharpness(np.asarray(m["values"], dtype=np.float32), x2i, res,
                                                    sharpness_slope(info))
                    intensity = -pp.map_values_at(blurred, x2i, centre_xyz(vp.prep))
                for k, v in (("voxel_network", vp.network_values), ("packing", vp.term_values.get("packing")),
                             ("intensity", intensity)):
                    if v is not None:
                        at = vp.values_at(xyz, zscore(v))
                        arrays[f"{i}|{k}"] = zscore(residue_values(at, st.res_index, st.atom_name, st.n_res,
                                                                   "backbone"))
        return arrays
    d = cached_arrays(WEIGHTS_CACHE / models_key(models) / f"{name}.npz", make)
    maps: dict[str, dict] = {}
    for k, v in d.items():
        if "|" in k:
            i, what = k.split("|")
            maps.setdefault(i, {"chain": name, "truth": d["truth"]})[what] = v.item() if what == "variant" else v
    return list(maps.values())


SHARPNESS_SLOPES = (None, -50.0, -75.0, -100.0, -130.0, -160.0, -200.0)  # None: no blur
SHARPNESS_CACHE = ATLAS_CACHE / "sharpness"


def chain_sharpness(name: str, models_dir: Path) -> dict[str, np.ndarray]:
    """Per map of the chain: structure mode's (map + model network) and voxel mode's (map-only) residue r with MD
    with each model's ``sharpness_slope`` at each of SHARPNESS_SLOPES.  A map no sharper than a slope, as the mode's
    recipe measures it (structure mode over its window), is not blurred there, so it reuses the unblurred run."""
    models = load_models([models_dir])

    def make() -> dict[str, np.ndarray]:
        st, rmsf = load_chain(name)
        truth = np.log10(rmsf)
        arrays: dict[str, np.ndarray] = {}
        for i, m in enumerate(chain_maps(name)):
            res = float(m["resolution"])
            arrays[f"{i}|variant"] = np.array(str(m["variant"]))
            values = np.asarray(m["values"], dtype=np.float32)
            x2i, _ = pp.grid_transforms(m["origin"], (float(m["voxel_size"]),) * 3)
            xyz = np.asarray(m["xyz"], dtype=np.float64)
            for mode, structure in (("structure", True), ("voxel", False)):
                base = pick(models, res, structure)
                if base is None:
                    continue

                def at(t, base=base):  # the model with this sharpness slope (a session of its own in validate-md)
                    return replace(base, calibration={**base.calibration, "sharpness_slope": t})
                if structure:
                    slope = structure_input(at(None), values, x2i, xyz, pp.points_inside_map(xyz, x2i, values.shape),
                                            res)[2].slope
                else:
                    slope = pp.match_sharpness(values, x2i, res, None)[1].slope
                r, done = [], {}
                for t in SHARPNESS_SLOPES:
                    key = None if t is None or not slope > t else t
                    if key not in done:
                        if structure:
                            v = structure_mode(at(key), st, m, "backbone", normal_modes=False, md_units=False)[
                                "reported"]
                        else:
                            v = residue_values(voxel_mode(at(key), m, None).values_at(xyz), st.res_index,
                                               st.atom_name, st.n_res, "backbone")
                        done[key] = pearson(v, truth)
                    r.append(done[key])
                arrays[f"{i}|{mode}"] = np.array(r)
        return arrays
    return cached_arrays(SHARPNESS_CACHE / models_key(models) / f"{name}.npz", make)


def fit_sharpness(models_dir: Path, workers: int = 2) -> dict:
    """Per mode, the slope of SHARPNESS_SLOPES with the largest mean r with MD (mean over chains, then over hard and
    clean maps), and the whole table; chains in ``workers`` processes, cached per chain (a rerun resumes)."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial
    names = chains()
    with ProcessPoolExecutor(workers) as pool:
        per_chain = dict(zip(names, pool.map(partial(chain_sharpness, models_dir=models_dir), names)))
    out = {}
    for mode in ("structure", "voxel"):
        per: dict[str, list[np.ndarray]] = {}
        for d in per_chain.values():
            rows: dict[str, list[np.ndarray]] = {}
            for k, v in d.items():
                i, what = k.split("|")
                if what == mode:
                    rows.setdefault(str(d[f"{i}|variant"]), []).append(v)
            for variant, rs in rows.items():
                per.setdefault(variant, []).append(np.nanmean(rs, axis=0))
        table = np.mean([np.nanmean(per[v], axis=0) for v in FIT_VARIANTS if v in per], axis=0)
        best = int(np.nanargmax(table))
        out[mode] = {"slope": SHARPNESS_SLOPES[best],
                     "residue_r": {str(t): float(x) for t, x in zip(SHARPNESS_SLOPES, table)},
                     "per_variant": {v: {str(t): float(x) for t, x in zip(SHARPNESS_SLOPES, np.nanmean(per[v], axis=0))}
                                     for v in FIT_VARIANTS if v in per}}
    return out


def mean_r(maps: list[dict], combine) -> float:
    """Mean over FIT_VARIANTS of the mean over chains of the chain's mean r of ``combine(map)`` with MD."""
    per: dict[str, dict[str, list[float]]] = {}
    for m in maps:
        v = combine(m)
        if v is not None and m["variant"] in FIT_VARIANTS:
            per.setdefault(m["variant"], {}).setdefault(m["chain"], []).append(pearson(v, m["truth"]))
    return float(np.mean([np.nanmean([np.nanmean(x) for x in c.values()]) for c in per.values()]))


TERMS = {"structure": ("network", {"contrast_weight": "contrast", "native_contrast_weight": "native_contrast"}),
         "voxel": ("voxel_network", {"map_packing_weight": "packing", "map_intensity_weight": "intensity"})}
GRIDS = {"contrast_weight": CONTRAST_WEIGHTS, "native_contrast_weight": CONTRAST_WEIGHTS,
         "map_packing_weight": MAP_SHAPE_WEIGHTS, "map_intensity_weight": MAP_SHAPE_WEIGHTS}
KIND = {"structure": "map+model", "voxel": "map"}


def combined_r(maps: list[dict], mode: str, weights: dict) -> float:
    """``mean_r`` of a mode's combination z(network) + sum of weight x z(term) at these weights (a term at weight 0
    is not read: models with a weight of 0 do not compute it)."""
    base, terms = TERMS[mode]
    on = {w: t for w, t in terms.items() if float(weights.get(w, 0.0))}
    return mean_r(maps, lambda m: m[base] + sum(float(weights[w]) * m[t] for w, t in on.items()))


def fit_weights(maps: list[dict], current: dict[str, dict]) -> dict:
    """Per mode and weight: the grid value with the largest ``mean_r``, each weight fitted with the mode's others at
    their ``current`` values (the models' calibration), and the r it gives beside the r at the current weights.  A
    term the models do not compute (its weight is 0) stays at 0 and the others are fitted; a mode is left out only
    when its network values, or a term it weighs, are missing."""
    out: dict = {}
    for mode, (base, terms) in TERMS.items():
        if mode not in current or not all(base in m for m in maps):
            continue
        cur = {w: float(current[mode].get(w, 0.0)) for w in terms}
        have = [w for w, t in terms.items() if all(t in m for m in maps)]
        if any(cur[w] for w in terms if w not in have):
            continue
        out[mode] = {"residue_r_current": combined_r(maps, mode, cur), "current": cur, "fitted": {},
                     "not_computed": [w for w in terms if w not in have]}
        for w in have:
            table = {g: combined_r(maps, mode, {**cur, w: float(g)}) for g in GRIDS[w]}
            best = max(table, key=table.get)
            out[mode]["fitted"][w] = {"value": float(best), "residue_r": table[best]}
    return out


class MapFit(NamedTuple):
    """One atlas_eval map, as the SD fit needs it."""

    mean: np.ndarray  # per atom, the network's value
    head_sd: np.ndarray  # per atom, the variance head's SD
    per_res: Callable  # per-atom -> per-residue mean
    truth: np.ndarray  # per residue, log10 MD RMSF
    reported: np.ndarray  # per residue, structure mode's value (network units)
    run: float  # the run factor (``run_factor``)
    apart: np.ndarray  # per residue, ``expected.packing_disagreement``
    agree: float = float("nan")  # the run feature agree_raw: the network's agreement with the map's own values


def shaped_sd(f: MapFit, b: float, power: float, c: float) -> np.ndarray:
    """Per-residue SD with ``sd_slope`` b, ``sd_power``, ``sd_disagreement`` c and neither scale nor run factor
    (the bundle's ``calibrated_sd``; the disagreement is constant over a residue's atoms, so it factors out of the
    residue mean)."""
    return f.per_res(calibrated_sd(f.head_sd, f.mean, {"sd_slope": b, "sd_power": power})) * np.exp(c * f.apart)


def _shape_nll(f: MapFit, b: float, power: float, c: np.ndarray) -> np.ndarray:
    """Gaussian NLL of one map's residue errors at slope b, power and each disagreement weight in ``c``, the map's
    own scale profiled out (so the run factor, one number per map, plays no part): error = MD minus the map's line on
    the reported value."""
    s = shaped_sd(f, b, power, 0.0)
    ok = np.isfinite(f.reported) & np.isfinite(s) & np.isfinite(f.truth) & (s > 0)
    e2 = line_errors(f.reported, f.truth, ok) ** 2
    log_s = np.log(s[ok])[None, :] + np.asarray(c, dtype=np.float64)[:, None] * f.apart[ok][None, :]
    return log_s.sum(axis=1) + 0.5 * ok.sum() * np.log(np.mean(e2[None, :] * np.exp(-2 * log_s), axis=1))


def fit_sd_shape(fits: list[MapFit], disagreement: bool = False) -> tuple[float, float, float]:
    """(slope b, power p, disagreement c) with the largest likelihood of these maps' errors: (b, p) on GRID with c
    = 0, then with ``disagreement`` (b, c) on SLOPES x DISAGREEMENTS at that p."""
    zero = np.zeros(1)
    table = np.array([sum(float(_shape_nll(f, b, p, zero)[0]) for f in fits) for b, p in GRID])
    b, p = GRID[int(np.argmin(table))]
    if not disagreement:
        return float(b), p, 0.0
    table = np.array([sum(_shape_nll(f, float(b), p, DISAGREEMENTS) for f in fits) for b in SLOPES])
    i, j = np.unravel_index(int(np.argmin(table)), table.shape)
    return float(SLOPES[i]), p, float(DISAGREEMENTS[j])


def sd_pairs(fits: list[MapFit], b: float, power: float, c: float, scale: float = 1.0) -> list:
    """Per map (SD in MD's units, error) as validate-md takes them (``sd_and_errors``), at these SD numbers."""
    return [sd_and_errors(f.reported, shaped_sd(f, b, power, c) * f.run * scale, f.truth) for f in fits]


def fit_run_slope(fits: list[MapFit], b: float, power: float, c: float) -> tuple[float, float]:
    """(slope, centre) of the agree_raw run factor: centre the mean agree_raw of these maps, slope on RUN_SLOPES by
    maximum likelihood of all maps' residue errors under one common scale (profiled out), so that maps whose network
    agrees less with the map's own values get wider SDs if their errors are wider."""
    if not np.isfinite([f.agree for f in fits]).any():
        raise ValueError("the atlas_eval results lack the run feature agree_raw (cached before it was kept): delete "
                         f"{ATLAS_CACHE / 'results'} to remake them")
    centre = float(np.nanmean([f.agree for f in fits]))
    kept = [(x, f.agree) for x, f in zip(sd_pairs([f._replace(run=1.0) for f in fits], b, power, c), fits)
            if x is not None]
    s = [x[0] for x, _ in kept]
    e = [x[1] for x, _ in kept]
    a = np.nan_to_num(np.array([g for _, g in kept]), nan=centre)

    def nll(slope: float) -> float:
        t = [si * np.exp(slope * (ai - centre)) for si, ai in zip(s, a)]
        n = sum(len(ti) for ti in t)
        return float(sum(np.log(ti).sum() for ti in t)
                     + 0.5 * n * np.log(np.mean(np.concatenate([ei ** 2 / ti ** 2 for ei, ti in zip(e, t)]))))
    return float(RUN_SLOPES[int(np.argmin([nll(float(k)) for k in RUN_SLOPES]))]), centre


def fit_sd_scale(fits: list[MapFit], b: float, power: float, c: float) -> float:
    """The factor on the shaped SD at which ±SD holds 68 % of the errors (after each map's line, SD x |slope|)."""
    pairs = [x for x in sd_pairs(fits, b, power, c) if x is not None]
    return float(np.quantile(np.concatenate([np.abs(e) / s for s, e in pairs]), 0.68))


RUN_SLOPES = np.round(np.arange(-6.0, 1.01, 0.05), 2)  # of the agree_raw run factor


def run_factor(row: dict, sd_run: str, slope: float = 0.0, centre: float = 0.0) -> float:
    """An atlas_eval row's SD run factor, as the bundle computes it (``recipe.run_factor_from``) under a calibration
    with this ``sd_run``, ``slope`` and ``centre``."""
    cal = {"sd_run": sd_run, "sd_run_slope": slope, "sd_run_centre": centre}
    return run_factor_from(cal, float(row.get("feature_agree_raw", np.nan)), row.get("expected_r"), row["reported"])


def map_fits(rows: list[dict], kind: str, sd_run: str = "none", variants: tuple[str, ...] = FIT_VARIANTS,
             run_slope: float = 0.0, run_centre: float = 0.0) -> list[MapFit]:
    """The SD fit's view of one model kind's atlas_eval rows on ``variants`` (the agree_raw run factor at
    ``run_slope`` and ``run_centre``)."""
    packing = {}
    out = []
    for r in rows:
        if r["kind"] != kind or r["variant"] not in variants or "atom_head_sd" not in r:
            continue
        if r["chain"] not in packing:
            st, _ = load_chain(r["chain"])
            ca = st.ca_index()
            packing[r["chain"]] = residue_packing(st.xyz[ca], st.res_index[ca], st.xyz, np.arange(st.n_res))
        out.append(MapFit(r["atom_network"], r["atom_head_sd"], per_residue(r), r["truth"], r["reported"],
                          run_factor(r, sd_run, run_slope, run_centre),
                          packing_disagreement(r["reported"], packing[r["chain"]]),
                          float(r.get("feature_agree_raw", np.nan))))
    return out


def sd_bands_atlas(rows: list[dict], kind: str, b: float, power: float, c: float, scale: float,
                   sd_run: str, run_slope: float = 0.0, run_centre: float = 0.0) -> dict:
    """validate-md's tercile ratio and coverage (``sd_bands``) on atlas_train's own maps at these SD numbers (in
    sample: what the fit reaches where it was made)."""
    out = {}
    for v in sorted({r["variant"] for r in rows}):
        pairs = sd_pairs(map_fits(rows, kind, sd_run, (v,), run_slope, run_centre), b, power, c, scale)
        out.update(sd_bands([{"_sd_err": [(v, x) for x in pairs]}], (v,)))
    return out


def set_calibration(path: Path, updates: dict) -> None:
    """Merge ``updates`` into an ONNX model's DEFMap calibration metadata, in place, and rewrite its side file."""
    import onnx

    from chimerax.defmap.network import META_KEY

    from .export import write_stages
    m = onnx.load(str(path))
    props = {p.key: p for p in m.metadata_props}
    meta = json.loads(props[META_KEY].value)
    meta["calibration"] = {**(meta.get("calibration") or {}), **updates}
    props[META_KEY].value = json.dumps(meta, sort_keys=True)
    onnx.save(m, str(path))
    write_stages(path)


def model_files(models_dir: Path, kind: str) -> list[Path]:
    """The ONNX models of one kind ("map+model" or "map") in the folder."""
    from chimerax.defmap import recipe
    from chimerax.defmap.network import read_model_info
    return [f for f in sorted(Path(models_dir).glob("*.onnx")) if recipe.model_kind(read_model_info(f)) == kind]


def run(models_dir: Path, out: Path, steps: tuple[str, ...] = ("weights", "sd", "md-units", "expected-r"),
        write_weights: tuple[str, ...] = tuple(GRIDS), sd_run: str = "none", sd_disagreement: bool = False) -> dict:
    """The steps in order; ``write_weights``: the weights whose fitted values are written (the others are reported
    only: a weight is shipped only where it also holds on the image-formation maps, which validate-md measures);
    ``sd_run``: "expected_r" scales each run's SD by its run factor, "none" leaves it out; ``sd_disagreement`` fits
    the weight of the disagreement with the model's packing (else 0).  Both are off for the shipped models: on
    md_reference they ranked errors worse on clean and image-formation maps and widened every band
    (``training/reports/sd_run.md``)."""
    from chimerax.defmap.network import read_model_info

    from . import expected_r_fit, md_units_fit
    models_dir = Path(models_dir)
    command = (f"defmap-train md-calibrate --models {repo_relative(models_dir)} --steps {','.join(steps)} "
               f"--write-weights {','.join(write_weights)} --sd-run {sd_run}"
               + (" --sd-disagreement" if sd_disagreement else ""))
    # a run of some steps keeps the other steps' sections of an earlier report; each section names its command
    report: dict = json.loads(out.read_text(encoding="utf-8")) if Path(out).exists() else {}
    report.pop("command", None)
    report["fitted_on"] = FITTED_ON
    if "sharpness" in steps:
        fitted = fit_sharpness(models_dir)
        for mode, d in fitted.items():
            files = model_files(models_dir, KIND[mode])
            for f in files:
                set_calibration(f, {"sharpness_slope": d["slope"], "sharpness_fitted_on": FITTED_ON})
            d["written"] = [repo_relative(f) for f in files]
        report["sharpness"] = {"command": command, **fitted}
        print(json.dumps({"sharpness": fitted}, indent=1), flush=True)
    if "weights" in steps:
        models = load_models([models_dir])
        maps = [m for n in chains() for m in chain_terms(n, models)]
        files = {mode: model_files(models_dir, kind) for mode, kind in KIND.items()}
        current = {mode: read_model_info(fs[0]).calibration for mode, fs in files.items() if fs}
        fitted = fit_weights(maps, current)
        for mode, d in fitted.items():
            cal = {w: f["value"] for w, f in d["fitted"].items() if w in write_weights}
            for f in files[mode] if cal else []:
                set_calibration(f, {**cal, "weights_fitted_on": FITTED_ON})
            d["written"] = {w: [repo_relative(f) for f in files[mode]] for w in cal}
        report["weights"] = {"command": command, **fitted}
        print(json.dumps({"weights": fitted}, indent=1), flush=True)
    if "sd" in steps:
        rows = all_results(models_dir)
        report["sd"] = {"command": command}
        for kind in sorted({r["kind"] for r in rows}):
            fits = map_fits(rows, kind, sd_run)
            if not fits:
                continue
            b, p, c = fit_sd_shape(fits, sd_disagreement)
            run = {"run_slope": 0.0, "run_centre": 0.0}
            if sd_run == "agree_raw":  # the shape first (each map's scale profiled out), then the run factor
                run["run_slope"], run["run_centre"] = fit_run_slope(fits, b, p, c)
                fits = map_fits(rows, kind, sd_run, **run)
            scale = fit_sd_scale(fits, b, p, c)
            cal = {"sd_slope": b, "sd_power": p, "sd_scale": scale, "sd_slope_fitted_on": FITTED_ON}
            if sd_run != "none" or c:  # left out when off, so the models read as before
                cal.update({"sd_disagreement": c, "sd_run": sd_run})
            if sd_run == "agree_raw":
                cal.update({"sd_run_slope": run["run_slope"], "sd_run_centre": run["run_centre"]})
            files = [f for f in model_files(models_dir, kind) if read_model_info(f).has_variance]
            for f in files:
                set_calibration(f, cal)
            report["sd"][kind] = {"maps": len(fits), "sd_slope": b, "sd_power": p, "sd_disagreement": c,
                                  "sd_scale": scale, "sd_run": sd_run, **(run if sd_run == "agree_raw" else {}),
                                  "bands_in_sample": sd_bands_atlas(rows, kind, b, p, c, scale, sd_run,
                                                                    run["run_slope"], run["run_centre"]),
                                  "written": [repo_relative(f) for f in files]}
    if "md-units" in steps:
        md_units_fit.run(models_dir, md_units_fit.REPORT, md_units_fit.SHIPPED)
    if "expected-r" in steps:
        expected_r_fit.run(models_dir, expected_r_fit.REPORT, expected_r_fit.SHIPPED)
    write_json(out, report)
    return report


def add_parser(sub) -> None:
    p = sub.add_parser("md-calibrate", help="fit the combination weights and the SD on atlas_train's MD, write them "
                       "into the models, then refit md-units and expected-r")
    p.add_argument("--models", type=Path, default=Path("onnx_models"))
    p.add_argument("--out", type=Path, default=Path("training/reports/md_calibration.json"))
    p.add_argument("--steps", default="weights,sd,md-units,expected-r",
                   help="which steps, in this order: sharpness, weights, sd, md-units, expected-r")
    p.add_argument("--write-weights", default=",".join(GRIDS),
                   help="the weights whose fitted values are written into the models (the others are only reported)")
    p.add_argument("--sd-run", choices=("agree_raw", "expected_r", "none"), default="none",
                   help="scale each run's SD by a factor fitted on the network's agreement with the map's own "
                   "values (agree_raw), by the error its expected r implies (expected_r), or not (none)")
    p.add_argument("--sd-disagreement", action="store_true",
                   help="fit a weight on the SD for the prediction's disagreement with the model's packing")
    p.set_defaults(fn=lambda a: print(json.dumps(run(a.models, a.out, tuple(a.steps.split(",")),
                                                     tuple(w for w in a.write_weights.split(",") if w), a.sd_run,
                                                     a.sd_disagreement),
                                                 indent=1, default=float)))
