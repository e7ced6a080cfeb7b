"""Real-MD yardstick on engine maps: ``defmap-train validate-md`` on the md_reference chains (never trained on).

For each of the 17 chains with real MD RMSF (5 ATLAS 300 K, 12 mdCATH 320 K; ``../shared/data/md_reference``) maps are
simulated from the chain's own MD:

* ``hard``: Debye–Waller maps from the published per-residue C-alpha RMSF with the training randomization (local
  resolution, damage, coloured noise, B-factor, masking); the fitted model is the MD start structure;
* ``clean``: the same without confounders;
* ``frames`` (the 6 chains with MD snapshots): the mean density of the frames (hard confounders), with the fitted model
  at the frames' mean positions, as a user's model fitted into the map would sit.  Five chains have one real point per
  residue per frame (see the md_reference README), so their frames move each residue rigidly.

Per map and chain, Pearson r per residue with log10 MD RMSF of the baselines (raw intensity minus the map value at the
atoms, ANM of the fitted model, their z-sum) and of what ``defmap`` reports, computed by the bundle's own recipe
(``chimerax.defmap.recipe``; ``training/tests/test_validate_md_recipe.py`` checks the values equal the command's):
structure mode (``predict_atoms`` with the model ``defmap`` would choose: the default, the network alone, each density
contrast alone, and with ``normalModes true``), voxel mode (``predict_voxels`` at the level the map chooses, at the
level enclosing the fitted model's volume and at about ChimeraX's initial level, its dynamics map read at the atoms;
with ``normalModes true``; the network and the packing alone; the map-only model in structure mode), and Spearman(SD,
|error|) of structure mode's SD with the error taken after a per-chain linear fit of MD on the prediction. The residue
value is the mean over ``--residue-atoms`` (heavy, backbone or ca; the bundle's default is backbone) of the per-atom
values.

Nothing is fitted to these chains (the SD and the weights are fitted on atlas_train by ``defmap-train
md-calibrate``).  Maps are cached in ``training/data/validate_md`` (seeded; delete to remake).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from chimerax.defmap import network, recipe, structure_prior
from chimerax.defmap import preprocess as pp
from chimerax.defmap.combination import combine
from chimerax.defmap.map_shape import RESIDUE_VOLUME
from chimerax.defmap.nma import anm_log_fluctuations

from .ensembles import _record
from .maps import CLEAN, Randomization, simulate_map
from .md_reference import ATLAS, frame_displacements, load_chain, md_chains
from .paths import DEFAULT_DATA, SHARED, repo_relative, seed_of, write_json
from .structure import Structure

CACHE = DEFAULT_DATA / "validate_md"
ENGINE_VARIANTS = ("hard", "clean", "frames")  # made by the training engine's code (maps.py): in-family
IMAGE_VARIANTS = {"image": "ensemble", "image_frames": "frames"}  # image_formation.py's maps: cross-family
VARIANTS = ENGINE_VARIANTS + tuple(IMAGE_VARIANTS)
BACKBONE = {"N", "CA", "C", "O"}


# ------------------------------------------------------------------ chains and maps

def chain_records(md_dir: Path, name: str) -> dict[str, dict]:
    """variant -> ensemble record (xyz = the fitted model the map comes with)."""
    st, md = load_chain(md_dir, name)
    recs = {"hard": _record(st, md[st.res_index], None, "md_residue_table")}
    recs["clean"] = recs["hard"]
    disp = frame_displacements(st, Path(md_dir) / "frames" / name)
    if disp is not None:
        mean = disp.mean(axis=0)
        st_mean = Structure(st.name, st.xyz + mean, st.element, st.atom_name, st.res_index, st.res_name,
                            st.res_label, st.chain_of_res, st.bfactor)
        recs["frames"] = _record(st_mean, md[st.res_index], disp - mean[None], "md_frames")
    return recs


def cached_maps(md_dir: Path, name: str, maps_per_variant: int, cache: Path = CACHE,
                records=None, variants: tuple[str, ...] = ENGINE_VARIANTS) -> list[dict]:
    """Simulated maps of one chain (values, origin, voxel size, resolution, fitted-model xyz, variant); ``records``
    () -> variant -> ensemble record, md_reference's (``chain_records``) unless given."""
    cache.mkdir(parents=True, exist_ok=True)
    records = records or (lambda: chain_records(md_dir, name))
    recs = None
    out = []
    for variant in variants:
        for k in range(maps_per_variant):
            f = cache / f"{name}__{variant}{k}.npz"
            if not f.exists():
                recs = recs or records()
                if variant not in recs:
                    continue
                rec = recs[variant]
                rng = np.random.default_rng(seed_of("validate-md", name, variant, k))
                sim = simulate_map(rec, rng, CLEAN if variant == "clean" else Randomization())
                np.savez(f, values=sim.values, origin=sim.origin, voxel_size=sim.voxel_size,
                         resolution=sim.resolution, xyz=rec["xyz"], params=json.dumps(sim.params))
            with np.load(f) as z:
                out.append({"variant": variant, "k": k, **{key: z[key] for key in z.files}})
    return out


# ------------------------------------------------------------------ models: the bundle's own recipe

def load_models(dirs: list[Path]) -> list[network.ModelInfo]:
    """The models in these folders, read as the bundle reads installed ones."""
    return [network.read_model_info(p) for d in dirs for p in sorted(Path(d).glob("*.onnx"))]


_PREDICTORS: dict[tuple, network.Predictor] = {}


def predictor(info: network.ModelInfo) -> network.Predictor:
    """One onnxruntime session per model file for the whole run (CPU: the numbers must not depend on a GPU); a file
    rewritten since (``md-calibrate`` writes calibrations) gets a new one, with the calibration it now holds."""
    key = (str(info.path), info.path.stat().st_mtime_ns, json.dumps(info.calibration, sort_keys=True))
    if key not in _PREDICTORS:
        _PREDICTORS[key] = network.Predictor(info, "cpu", threads=2)
    return _PREDICTORS[key]


def pick(models: list[network.ModelInfo], resolution: float, structure: bool) -> network.ModelInfo | None:
    """The model ``defmap`` would choose for this map (``network.choose_model``), None if none fits the mode."""
    try:
        return network.choose_model(models, resolution, structure)
    except network.ModelError:
        return None


def model_volume_level(values: np.ndarray, n_residues: int, voxel_size: float) -> float:
    """The level whose contour encloses the fitted model's volume (``map_shape.RESIDUE_VOLUME`` per residue)."""
    n = int(round(n_residues * RESIDUE_VOLUME / voxel_size ** 3))
    flat = np.sort(np.asarray(values, dtype=np.float64).ravel())
    return float(flat[-min(max(n, 1), len(flat))])


def level_volumes(values: np.ndarray, level: float, voxel_size: float, n_residues: int) -> dict[str, float]:
    """What the chosen ``level`` and ChimeraX's initial level enclose, each over the fitted model's volume."""
    model_volume = n_residues * RESIDUE_VOLUME
    return {f"{name}_volume": float((values >= lv).sum()) * voxel_size ** 3 / model_volume
            for name, lv in (("auto_level", level), ("initial_level", initial_level(values)))}


def initial_level(values: np.ndarray) -> float:
    """About ChimeraX's initial level for a map it opens (the value 1 % of the box's voxels exceed), the level
    ``open MAP; defmap #1`` scores at."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), 0.99))


def _full(ids: np.ndarray, vals: np.ndarray | None, n: int) -> np.ndarray:
    """Per-residue values at positions ``ids`` in an array over all ``n`` residues (NaN elsewhere)."""
    out = np.full(n, np.nan)
    if vals is not None:
        out[np.asarray(ids, dtype=np.int64)] = vals
    return out


def _atoms(scored: np.ndarray, vals: np.ndarray | None) -> np.ndarray:
    """Per-scored-atom values in an array over all atoms (NaN where an atom was not scored)."""
    out = np.full(len(scored), np.nan)
    if vals is not None:
        out[scored] = vals
    return out


def structure_mode(info: network.ModelInfo, st: Structure, m: dict, residue_atoms: str,
                   normal_modes: bool = True, md_units: bool = True) -> dict[str, np.ndarray]:
    """``defmap MAP structure MODEL`` on one map (``recipe.predict_atoms``, with the C-alpha atoms for
    ``normalModes true`` unless ``normal_modes`` is False): per-residue arrays over the chain's residues
    (``reported`` is the default's value), and per atom the network's value and its head SD for the SD
    calibration."""
    xyz = np.asarray(m["xyz"], dtype=np.float64)
    x2i, _ = pp.grid_transforms(m["origin"], (float(m["voxel_size"]),) * 3)
    ca = st.ca_index()
    base = recipe.predict_atoms(predictor(info), np.asarray(m["values"], dtype=np.float32), x2i, xyz, st.element,
                                st.atom_name, st.res_index, map_resolution=float(m["resolution"]),
                                residue_atoms=residue_atoms, md_units=False)
    p = copy.deepcopy(base)  # the default: `defmap MAP structure MODEL`
    recipe.finish(p, info, xyz, st.element, st.atom_name, None, md_units)
    nm = None
    if normal_modes:  # `normalModes true`: the same network values, then the recipe's last steps with the prior
        nm = copy.deepcopy(base)
        recipe.finish(nm, info, xyz, st.element, st.atom_name, (xyz[ca], st.res_index[ca]), md_units)
    n = st.n_res
    out = {"reported": _full(p.residue_ids, p.residue_values, n),
           "network": _full(p.residue_ids, p.network_residue_values if p.network_residue_values is not None
                            else base.residue_values, n),
           "normal_modes": _full(nm.residue_ids, nm.residue_values, n) if nm is not None else None,
           "prior": _full(nm.residue_ids, nm.nma_residue_values, n) if nm is not None else None,
           "sd": _full(p.residue_ids, p.residue_sd(), n) if p.atom_sd is not None else None,
           "atom_network": _atoms(p.scored, p.network_atom_values),
           "atom_head_sd": _atoms(p.scored, p.atom_head_sd) if p.atom_head_sd is not None else None,
           "run_features": p.run_features, "expected": p.expected}
    out.update({k: _full(p.residue_ids, v, n) for k, v in p.term_values.items()})
    return out


def voxel_mode(info: network.ModelInfo, m: dict, level: float | None,
               normal_modes: bool = False) -> recipe.VoxelPrediction:
    """``defmap MAP level L`` on one map (``recipe.predict_voxels``; ``level`` None: ``defmap MAP``, the level the
    map chooses)."""
    vs = float(m["voxel_size"])
    values = np.asarray(m["values"], dtype=np.float32)
    x2i, i2x = pp.grid_transforms(m["origin"], (vs,) * 3)
    return recipe.predict_voxels(predictor(info), values, x2i, i2x, level, map_resolution=float(m["resolution"]),
                                 normal_modes=normal_modes)


# ------------------------------------------------------------------ metrics

def residue_values(values: np.ndarray, st_res_index: np.ndarray, atom_name: np.ndarray, n_res: int,
                   atoms: str = "heavy") -> np.ndarray:
    """Per-residue mean of per-atom values over 'heavy' atoms, the 'backbone' (N, CA, C, O) or the 'ca' only."""
    v = np.asarray(values, dtype=np.float64)
    sel = np.isfinite(v)
    if atoms == "backbone":
        sel &= np.isin(atom_name, list(BACKBONE))
    elif atoms == "ca":
        sel &= atom_name == "CA"
    elif atoms != "heavy":
        raise ValueError(f"residue atoms must be ca, backbone or heavy, not {atoms!r}")
    s = np.bincount(st_res_index[sel], v[sel], minlength=n_res)
    c = np.bincount(st_res_index[sel], minlength=n_res)
    with np.errstate(invalid="ignore"):
        return s / np.where(c > 0, c, np.nan)


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def line_errors(pred: np.ndarray, truth: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The errors the SD should rank, at the ``ok`` entries: truth minus the least-squares line of truth on the
    prediction (MD and the training labels differ in scale)."""
    a, b = np.polyfit(pred[ok], truth[ok], 1)
    return truth[ok] - (a * pred[ok] + b)


def sd_error_spearman(pred: np.ndarray, sd: np.ndarray, truth: np.ndarray) -> float:
    """Spearman(SD, |error|) with error = truth minus the per-chain least-squares line of truth on the prediction."""
    ok = np.isfinite(pred) & np.isfinite(sd) & np.isfinite(truth)
    if ok.sum() < 5:
        return float("nan")
    return float(stats.spearmanr(sd[ok], np.abs(line_errors(pred, truth, ok))).statistic)


def map_rows(st: Structure, m: dict, models: list[network.ModelInfo], residue_atoms: str,
             truth: np.ndarray) -> dict:
    """One map's row: Pearson r with the MD of each baseline and of what each mode of ``defmap`` reports, every
    reported value from the bundle's recipe (``structure_mode``, ``voxel_mode``)."""
    xyz = np.asarray(m["xyz"], dtype=np.float64)
    vs, res = float(m["voxel_size"]), float(m["resolution"])
    x2i, _ = pp.grid_transforms(m["origin"], (vs,) * 3)
    values = np.asarray(m["values"], dtype=np.float32)

    def per_res(v, atoms=residue_atoms):
        return residue_values(v, st.res_index, st.atom_name, st.n_res, atoms)

    from .dataset import map_baselines
    raw = per_res(map_baselines(values, x2i, xyz, vs)["raw_intensity"])
    ca = st.ca_index()
    anm = np.full(st.n_res, np.nan)
    anm[st.res_index[ca]] = anm_log_fluctuations(xyz[ca])
    prior = np.full(st.n_res, np.nan)  # the structure prior normalModes uses (learned from MD when installed)
    prior[st.res_index[ca]] = structure_prior.prior_values(xyz[ca], xyz)[0]
    row: dict = {"resolution": res, "raw": pearson(raw, truth), "anm": pearson(anm, truth),
                 "raw+anm_zsum": pearson(combine(raw, anm), truth), "prior": pearson(prior, truth),
                 "raw+prior_zsum": pearson(combine(raw, prior), truth)}
    reported: dict[str, np.ndarray] = {}
    info = pick(models, res, structure=True)
    if info is not None:  # structure mode: `defmap MAP structure MODEL` and with `normalModes true`
        kind = "map+model"
        sm = structure_mode(info, st, m, residue_atoms)
        pr = reported[kind] = sm["reported"]
        row[kind], row[f"{kind}_model"] = pearson(pr, truth), info.path.name
        row[f"{kind}_network"] = pearson(sm["network"], truth)
        ok = np.isfinite(pr) & np.isfinite(truth)
        row[f"{kind}_abs_error"] = float(np.median(np.abs(pr[ok] - truth[ok])))  # log10 Å, as reported
        for term, col in (("contrast", "contrast"), ("native_contrast", "native")):  # each alone, a diagnostic
            if term in sm:
                row[col] = pearson(sm[term], truth)
        row[f"{kind}+anm_zsum"] = pearson(combine(pr, anm), truth)
        row[f"{kind}+anm_fitted"] = pearson(sm["normal_modes"], truth)  # normalModes true: w·prior, w from the CV
        if sm["sd"] is not None:
            row[f"{kind}_sd_spearman"] = sd_error_spearman(pr, sm["sd"], truth)
            row["_sd_err"] = sd_and_errors(pr, sm["sd"], truth)  # for sd_bands
        row[f"{kind}_value_spearman"] = sd_error_spearman(pr, pr, truth)  # the value itself as an SD, a diagnostic
        row.setdefault("_expected", []).append(expected_run("structure", sm["expected"], row[kind]))
    info = pick(models, res, structure=False)
    if info is not None:  # voxel mode: `defmap MAP` (the map chooses the level), read at the fitted model's atoms
        vp = voxel_mode(info, m, None)
        row.update(level_volumes(values, vp.level, vs, st.n_res))
        at = vp.values_at(xyz)
        pr = reported["map"] = per_res(at)
        row["map"], row["map_model"] = pearson(pr, truth), info.path.name
        row.setdefault("_expected", []).append(expected_run("voxel", vp.expected, row["map"]))
        row["map_network"] = pearson(per_res(vp.values_at(xyz, vp.network_values)), truth)
        if "packing" in vp.term_values:
            row["map_packing"] = pearson(per_res(vp.values_at(xyz, vp.term_values["packing"])), truth)
        for atoms in ("ca", "backbone", "heavy"):
            row[f"map_{atoms}"] = pearson(per_res(at, atoms), truth)
        row["map+anm_zsum"] = pearson(combine(pr, anm), truth)
        level = model_volume_level(values, st.n_res, vs)  # the level enclosing the model's volume (a diagnostic)
        row["map_model_volume"] = pearson(per_res(voxel_mode(info, m, level).values_at(xyz)), truth)
        try:
            nm = voxel_mode(info, m, None, normal_modes=True)
            row["map+map_anm"] = pearson(per_res(nm.values_at(xyz)), truth)
            row["map_anm"] = pearson(per_res(nm.values_at(xyz, nm.term_values["normal_modes"])), truth)
        except recipe.TooFewPseudoAtoms:
            pass
        # `defmap MAP structure MODEL model <map-only model>`, for its SD (no normal modes asked of it)
        one = structure_mode(info, st, m, residue_atoms, normal_modes=False)
        row["map_structure"] = pearson(one["reported"], truth)
        if one["sd"] is not None:  # the SD that model reports there
            row["map_sd_spearman"] = sd_error_spearman(one["reported"], one["sd"], truth)
        try:  # at about the level ChimeraX opens the map with (`open MAP; defmap #1`)
            row["map_initial_level"] = pearson(per_res(voxel_mode(info, m, initial_level(values)).values_at(xyz)),
                                               truth)
        except recipe.MapUnusable:
            pass
    if len(reported) == 2:  # does the two modes' disagreement rank the structure mode errors? (a diagnostic)
        row["pair_sd_spearman"] = sd_error_spearman(reported["map+model"],
                                                    np.abs(reported["map+model"] - reported["map"]), truth)
    return row


def image_maps(md_dir: Path, name: str, n: int) -> list[dict]:
    """The chain's image-formation maps (``image_formation``; made and cached on first use, minutes each), under
    validate-md's variant names."""
    if n <= 0:
        return []
    from .image_formation import image_formation_map
    out = []
    for variant, kind in IMAGE_VARIANTS.items():
        for k in range(n):
            m = image_formation_map(name, kind, k, md_dir=md_dir)
            if m is not None:
                out.append({**m, "variant": variant})
    return out


REAL_MAP = SHARED / "emdb" / "emd_3488.mrc"  # haemoglobin, 3.2 Å, with two fitted models; no MD truth
REAL_MODELS = ("5me2.pdb", "5ni1_updated.cif")
REAL_RESOLUTION = 3.2


def mrc_map(path: Path, resolution: float, xyz: np.ndarray) -> dict:
    """A real map with its fitted model's coordinates, in the form of the simulated maps (values, origin, voxel size,
    resolution, xyz)."""
    from .maps import read_mrc
    values, x2i, vs = read_mrc(path)
    return {"values": values, "origin": -x2i[:, 3] * vs, "voxel_size": vs, "resolution": resolution, "xyz": xyz}


def real_map_checks(models: list[network.ModelInfo], residue_atoms: str) -> dict:
    """Checks on a real map without MD truth (EMD-3488): do its two fitted models get the same dynamics (structure
    mode, with normalModes, the prior alone), does voxel mode agree with structure mode, and what do the map's chosen
    level and ChimeraX's initial level enclose, against the model's volume."""
    from .structure import load_structure
    if not REAL_MAP.is_file():
        return {}
    real, runs = mrc_map(REAL_MAP, REAL_RESOLUTION, np.zeros((0, 3))), {}
    for f in REAL_MODELS:
        st = load_structure(REAL_MAP.parent / f, f)
        m = {**real, "xyz": st.xyz}
        runs[f] = (st, m, structure_mode(pick(models, REAL_RESOLUTION, True), st, m, residue_atoms))
    (sa, ma, a), (sb, _, b) = runs.values()
    common = sorted(set(sa.res_label) & set(sb.res_label))
    ia = np.array([sa.res_label.index(x) for x in common])
    ib = np.array([sb.res_label.index(x) for x in common])
    out = {"map": REAL_MAP.name, "models": list(REAL_MODELS), "common_residues": len(common)}
    for key in ("reported", "normal_modes", "prior"):
        out[f"models_agree_{key}"] = pearson(a[key][ia], b[key][ib])
    info = pick(models, REAL_RESOLUTION, False)
    if info is not None:
        vp = voxel_mode(info, ma, None)
        vox = residue_values(vp.values_at(sa.xyz), sa.res_index, sa.atom_name, sa.n_res, residue_atoms)
        out["voxel_vs_structure"] = pearson(vox, a["reported"])
        out.update(level_volumes(real["values"], vp.level, real["voxel_size"], sa.n_res))
    return out


REAL_ROWS = [("models_agree_reported", "5ME2 vs 5NI1: structure mode, per-residue r"),
             ("models_agree_normal_modes", "5ME2 vs 5NI1: with normalModes"),
             ("models_agree_prior", "5ME2 vs 5NI1: the structure prior alone"),
             ("voxel_vs_structure", "voxel mode (chosen level) vs structure mode, 5ME2's residues"),
             ("auto_level_volume", "volume in the chosen level / model's volume"),
             ("initial_level_volume", "volume in ChimeraX's initial level / model's volume")]


def sd_and_errors(pred: np.ndarray, sd: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(SD in MD's log10 units, error) per residue of one map: error = MD minus the map's least-squares line of MD on
    the prediction, SD times that line's slope (the prediction and MD differ in scale)."""
    ok = np.isfinite(pred) & np.isfinite(sd) & np.isfinite(truth)
    if ok.sum() < 5:
        return None
    a, _ = np.polyfit(pred[ok], truth[ok], 1)
    return sd[ok] * abs(a), line_errors(pred, truth, ok)


def sd_bands(chains: list[dict], variants: tuple[str, ...] = VARIANTS) -> dict[str, dict]:
    """Per kind of map, pooled over chains and maps: mean |error| of the residues in the top third of the SD over
    that of the bottom third, and the fraction of errors within ±SD (68 % if the SD were right)."""
    out = {}
    for v in variants:
        pairs = [x for c in chains for vv, x in c.get("_sd_err", []) if vv == v and x is not None]
        if not pairs:
            continue
        sd = np.concatenate([p[0] for p in pairs])
        err = np.abs(np.concatenate([p[1] for p in pairs]))
        out[v] = {"tercile_ratio": top_third_ratio(sd, err), "coverage68": float((err <= sd).mean()),
                  "residues": int(len(sd))}
    return out


def top_third_ratio(sd: np.ndarray, abs_error: np.ndarray) -> float:
    """Mean abs error of the residues in the top third of the SD over that of the bottom third (``sd_bands``)."""
    lo, hi = np.quantile(sd, [1 / 3, 2 / 3])
    return float(abs_error[sd >= hi].mean() / abs_error[sd <= lo].mean())


def expected_run(mode: str, e, actual: float) -> dict | None:
    """One run's expected r (``expected.Expected``, None without the shipped fit) beside the r it got."""
    if e is None or not np.isfinite(actual):
        return None
    return {"mode": mode, "expected_r": e.r, "low": e.low, "high": e.high, "r": float(actual)}


FAMILIES = {"engine (in-family)": ENGINE_VARIANTS, "image formation (cross-family)": IMAGE_VARIANTS}


def expected_report(runs: list[dict]) -> dict:
    """Spearman(expected_r, actual r) and the fraction of runs whose r lies in the 68 % range: over all runs, per
    mode and per family (keys "all", "<mode>", "<mode>, <family>")."""
    def stats_of(rs):
        if len(rs) < 5:
            return None
        e, r = np.array([x["expected_r"] for x in rs]), np.array([x["r"] for x in rs])
        inside = np.mean([x["low"] <= x["r"] <= x["high"] for x in rs])
        return {"runs": len(rs), "spearman": float(stats.spearmanr(e, r).statistic), "within_range": float(inside),
                "mean_expected": float(e.mean()), "mean_r": float(r.mean())}
    groups = {"all": runs}
    for mode in ("structure", "voxel"):
        groups[mode] = [x for x in runs if x["mode"] == mode]
        for fam, vs in FAMILIES.items():
            groups[f"{mode}, {fam}"] = [x for x in groups[mode] if x["variant"] in vs]
    return {k: v for k, v in ((k, stats_of(rs)) for k, rs in groups.items()) if v is not None}


def expected_lines(rep: dict) -> list[str]:
    if not rep:
        return []
    out = ["Expected agreement per run (`expected_r`, fitted by `defmap-train expected-r` on engine maps of "
           "atlas_train, never these chains), against each map's actual r (one run = one map and mode):", "",
           "| runs | n | Spearman(expected_r, r) | r within the 68 % range | mean expected_r | mean r |",
           "|---|---|---|---|---|---|"]
    for k, d in rep.items():
        out.append(f"| {k} | {d['runs']} | {_f(d['spearman'])} | {_f(d['within_range'])} | "
                   f"{_f(d['mean_expected'])} | {_f(d['mean_r'])} |")
    return out + [""]


def sd_band_lines(bands: dict) -> list[str]:
    if not bands:
        return []
    return ["Structure mode's SD, pooled over chains (error after each map's linear fit of MD on the prediction): "
            + "; ".join(f"{v} top/bottom-third mean |error| {d['tercile_ratio']:.2f}, within ±SD {d['coverage68']:.2f}"
                        for v, d in bands.items()) + ".", ""]


def abs_error_lines(chains: list[dict]) -> list[str]:
    """Median |structure mode - MD| in log10 Å on the ATLAS chains (300 K, the MD the values would be compared with),
    per kind of map: the values in MD units (``md_units.py``, calibrated on atlas_train, never on these chains)."""
    atlas = [c for c in chains if c["chain"] in ATLAS]
    cells = []
    for v in VARIANTS:
        xs = [c["variants"][v]["map+model_abs_error"] for c in atlas if v in c["variants"]
              and np.isfinite(c["variants"][v].get("map+model_abs_error", np.nan))]
        if xs:
            cells.append(f"{v} {np.median(xs):.3f}")
    if not cells:
        return []
    return [f"Median |structure mode − MD| (log10 Å) over the {len(atlas)} ATLAS chains (300 K; median per chain, then "
            "over chains): " + ", ".join(cells) + ". The values are in MD units (ATLAS 300 K, calibrated on "
            "atlas_train by `defmap-train md-units`, never on these chains).", ""]


OPTIONS = [("map+model+anm_fitted", "map+model", "structure mode: normalModes true − default"),
           ("map+map_anm", "map", "voxel mode: normalModes true − default")]


def paired_cell(d: np.ndarray) -> str:
    """A paired difference over chains as the tables give it: mean ± standard error (chains that gain); "–" when
    fewer than two chains have it."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return "–"
    return f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f} ({(d > 0).sum()} of {len(d)} gain)"


def paired_lines(chains: list[dict]) -> list[str]:
    """Each option against its mode's default on the chains where both ran: the mean paired difference in r, its
    standard error and how many chains gain, per kind of map (a mean over fewer chains cannot show that)."""
    rows, paired = [], False
    for opt, default, title in OPTIONS:
        cells = []
        for v in VARIANTS:
            d = np.array([c["variants"][v].get(opt, np.nan) - c["variants"][v].get(default, np.nan)
                          for c in chains if v in c["variants"]])
            paired |= np.isfinite(d).sum() > 1
            cells.append(paired_cell(d))
        rows.append(f"| {title} | " + " | ".join(cells) + " |")
    if not paired:
        return []
    return (["Options against the default, paired by chain: mean difference in r ± its standard error (chains that "
             "gain):", "", "| option | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)] + rows + [""])


def compare_lines(a: dict, b: dict, column: str = "map+model") -> list[str]:
    """Two validate-md results (their JSON) in one column, paired by chain: per kind of map the mean r of each over
    the chains both have, and B − A as mean ± standard error (chains that gain), so a choice between two sets of
    models reads from one table, with its noise."""
    def per_chain(res: dict) -> dict[str, dict]:
        return {c["chain"]: c["variants"] for c in res["chains"]}
    ra, rb = per_chain(a), per_chain(b)
    lines = [f"Column `{column}`, A = {a.get('command', '?')}, B = {b.get('command', '?')}:", "",
             "| maps | A | B | B − A, paired by chain |", "|---|---|---|---|"]
    for v in VARIANTS:
        pairs = [(ra[c][v].get(column, np.nan), rb[c][v].get(column, np.nan)) for c in ra
                 if c in rb and v in ra[c] and v in rb[c]]
        x = np.array([p for p in pairs if np.isfinite(p).all()], dtype=np.float64).reshape(-1, 2)
        if len(x):
            family = "in-family" if v in ENGINE_VARIANTS else "cross-family"
            lines.append(f"| {v} ({family}) ({len(x)}) | {x[:, 0].mean():.3f} | {x[:, 1].mean():.3f} | "
                         f"{paired_cell(x[:, 1] - x[:, 0])} |")
    return lines + [""]


def real_map_lines(real: dict) -> list[str]:
    if not real:
        return []
    head = (f"### Real map without MD truth: {real['map']} ({REAL_RESOLUTION:g} Å), models "
            f"{', '.join(real['models'])} ({real['common_residues']} residues in both)")
    return ([head, "", "| check | value |", "|---|---|"]
            + [f"| {t} | {_f(real.get(k))} |" for k, t in REAL_ROWS] + [""])


def map_means(rows: list[dict], keys: list[str]) -> dict[str, float]:
    """A chain's value per column: the mean over all its maps of the kind, NaN where a map lacks it (an option that
    failed there).  A mean over the maps that have it would pair unlike maps with the other columns."""
    return {k: float(np.mean([r.get(k, np.nan) for r in rows])) for k in keys}


def evaluate_chain(md_dir: Path, name: str, models: list[network.ModelInfo], maps_per_variant: int,
                   residue_atoms: str, n_image_maps: int = 0) -> dict:
    st, md = load_chain(md_dir, name)
    truth = np.log10(md)
    rows: dict[str, list[dict]] = {}
    for m in cached_maps(md_dir, name, maps_per_variant) + image_maps(md_dir, name, n_image_maps):
        variant = m["variant"].item() if hasattr(m["variant"], "item") else m["variant"]
        rows.setdefault(variant, []).append(map_rows(st, m, models, residue_atoms, truth))
    out = {"chain": name, "source": "ATLAS 300 K" if name in ATLAS else "mdCATH 320 K", "residues": st.n_res,
           "variants": {}}
    for v, rs in rows.items():
        keys = list(dict.fromkeys(k for r in rs for k in r if not k.endswith("_model") and not k.startswith("_")))
        out.setdefault("_sd_err", []).extend((v, r["_sd_err"]) for r in rs if "_sd_err" in r)
        out.setdefault("_expected", []).extend({**e, "variant": v, "chain": name} for r in rs
                                               for e in r.get("_expected", []) if e is not None)
        out["variants"][v] = map_means(rs, keys)
        out["variants"][v]["maps"] = len(rs)
        out["variants"][v]["models"] = sorted({r[k] for r in rs for k in r if k.endswith("_model")})
    return out


COLUMNS = [("raw", "raw intensity"), ("raw+anm_zsum", "z(raw) + z(ANM)"), ("prior", "structure prior alone"),
           ("raw+prior_zsum", "z(raw) + z(prior)"), ("contrast", "density contrast alone"),
           ("native", "contrast at map resolution alone"), ("anm", "ANM (fitted model)"),
           ("map_packing", "packing of the map alone"), ("map_network", "map-only network alone"),
           ("map", "voxel mode (level chosen by the map)"), ("map_model_volume", "voxel mode (level: model volume)"),
           ("map_initial_level", "voxel mode (ChimeraX's initial level)"),
           ("auto_level_volume", "volume in the chosen level / model's"),
           ("initial_level_volume", "volume in ChimeraX's level / model's"),
           ("map_anm", "ANM of the map's pseudo-atoms alone"),
           ("map+map_anm", "map-only ⊕ ANM of the map (voxel mode normalModes)"),
           ("map+model_network", "map + model network alone"),
           ("map+model", "map + model (structure mode)"), ("map+anm_zsum", "map-only ⊕ ANM (z-sum)"),
           ("map+model+anm_zsum", "map+model ⊕ ANM (z-sum)"),
           ("map+model+anm_fitted", "map+model ⊕ w·prior (normalModes; w from CV)"),
           ("map_structure", "map-only model in structure mode"), ("map+model_sd_spearman", "Spearman(SD, abs err)"),
           ("map_sd_spearman", "Spearman(SD, abs err), map-only model in structure mode"),
           ("pair_sd_spearman", "Spearman(abs(map+model − map-only), abs err)"),
           ("map+model_value_spearman", "Spearman(map+model prediction, abs err)")]
ATOM_COLUMNS = [("map_ca", "C-alpha"), ("map_backbone", "backbone"), ("map_heavy", "heavy atoms")]


def markdown(result: dict) -> str:
    chains = result["chains"]
    lines = [f"Command: `{result['command']}`", "",
             f"Models: {', '.join(result['models']) or 'none'}; residue value = mean over "
             f"{result['residue_atoms']} atoms; {result['maps_per_variant']} map(s) per chain and variant; "
             "per-residue Pearson r with log10 MD RMSF, mean over a chain's maps.", ""]
    for v in VARIANTS:
        have = [c for c in chains if v in c["variants"]]
        if not have:
            continue
        cols = [(k, t) for k, t in COLUMNS if any(np.isfinite(c["variants"][v].get(k, np.nan)) for c in have)]
        lines += [f"### {v} maps ({len(have)} chains)", "",
                  "| chain | source | residues | " + " | ".join(t for _, t in cols) + " |",
                  "|---|---|---|" + "---|" * len(cols)]
        for c in have:
            d = c["variants"][v]
            lines.append(f"| {c['chain']} | {c['source']} | {c['residues']} | "
                         + " | ".join(_f(d.get(k)) for k, _ in cols) + " |")
        s = result["summary"][v]
        lines.append("| **mean** | | | " + " | ".join(f"**{_mean(s, k)}**" for k, _ in cols) + " |")
        lines += ["", FEWER_CHAINS_NOTE, ""] if s.get("fewer_chains") else [""]
    lines += paired_lines(chains)
    lines += real_map_lines(result.get("real_map") or {})
    lines += abs_error_lines(chains)
    lines += sd_band_lines(result.get("sd_bands") or {})
    lines += expected_lines(result.get("expected_r") or {})
    lines += targets(result["summary"], result.get("expected_r"), result.get("sd_bands"))
    lines += ["### Residue value: which atoms (map-only model, mean r over chains)", "",
              "| maps | " + " | ".join(t for _, t in ATOM_COLUMNS) + " |", "|---|" + "---|" * len(ATOM_COLUMNS)]
    for v in VARIANTS:
        if v in result["summary"]:
            s = result["summary"][v]
            lines.append(f"| {v} | " + " | ".join(_f(s.get(k)) for k, _ in ATOM_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def targets(summary: dict, expected_r: dict | None = None, bands: dict | None = None) -> list[str]:
    """The targets the shipped models are held to, each with the measured numbers (mean per-residue r over the
    chains; the SD's tercile ratio and coverage pooled over chains, ``sd_bands``; the expected r's Spearman over
    runs, ``expected_report``)."""
    def g(v, k):
        return summary.get(v, {}).get(k, float("nan"))
    rows = [("hard: map + model ≥ ANM + 0.05", g("hard", "map+model"), g("hard", "anm") + 0.05),
            ("frames: map + model ≥ ANM + 0.05", g("frames", "map+model"), g("frames", "anm") + 0.05),
            ("clean: map + model ≥ raw intensity", g("clean", "map+model"), g("clean", "raw")),
            ("hard: map + model ≥ raw intensity + 0.15", g("hard", "map+model"), g("hard", "raw") + 0.15),
            ("hard: map-only ≥ raw intensity + 0.15", g("hard", "map"), g("hard", "raw") + 0.15)]
    for v in IMAGE_VARIANTS:  # the cross-family targets: beat every cheap rival a user has, by 0.03
        if v in summary:
            best = max(g(v, "anm"), g(v, "raw"), g(v, "raw+anm_zsum"))
            rows.append((f"{v}: structure mode ≥ max(ANM, raw, z-sum) + 0.03", g(v, "map+model"), best + 0.03))
    if "image" in summary:
        rows.append(("image: voxel mode ≥ raw intensity + 0.10", g("image", "map"), g("image", "raw") + 0.10))
    for v, d in (bands or {}).items():
        rows.append((f"{v}: SD's top/bottom-third mean |error| ≥ 1.5", d["tercile_ratio"], 1.5))
        rows.append((f"{v}: ±SD covers 60–76 % of the errors", d["coverage68"], (0.60, 0.76)))
    if expected_r and "all" in expected_r:
        rows.append(("Spearman(expected_r, actual r) ≥ 0.5 over all runs (both modes, both families)",
                     expected_r["all"]["spearman"], 0.5))
    out = ["### Targets", "", "| target | measured | needed | met |", "|---|---|---|---|"]
    for name, got, need in rows:
        lo, hi = need if isinstance(need, tuple) else (need, np.inf)
        met = "–" if not (np.isfinite(got) and np.isfinite(lo)) else ("yes" if lo <= got <= hi else "no")
        out.append(f"| {name} | {_f(got)} | {_f(lo) if hi == np.inf else f'{lo:.2f}–{hi:.2f}'} | {met} |")
    return out + [""]


DOC_BEGIN, DOC_END = "<!-- validate-md:begin -->", "<!-- validate-md:end -->"
DOC_COLUMNS = [("raw", "raw intensity"), ("anm", "ANM of the fitted model"), ("raw+anm_zsum", "z(raw) + z(ANM)"),
               ("prior", "structure prior (learned from MD) alone"), ("raw+prior_zsum", "z(raw) + z(prior)"),
               ("map_network", "map-only network alone"),
               ("map", "voxel mode (`defmap MAP`: level chosen by the map)"),
               ("map_model_volume", "voxel mode at the level enclosing the model's volume"),
               ("map_initial_level", "voxel mode at ChimeraX's initial level"),
               ("auto_level_volume", "volume in the chosen level / model's volume"),
               ("initial_level_volume", "volume in ChimeraX's level / model's volume"),
               ("map+map_anm", "voxel mode with normalModes (ANM of the map)"),
               ("map+model_network", "map + model network alone"),
               ("map+model", "map + model (structure mode)"),
               ("map+model+anm_fitted", "structure mode with normalModes (⊕ w·prior)"),
               ("map+model_sd_spearman", "Spearman(SD, abs error)")]


def docs_block(result: dict, train_jsons: list[Path]) -> str:
    """The summary docs/validation.md and MODEL_CARD carry between the validate-md markers: mean r per kind of map,
    the targets, and beside them how much of the training labels the structure alone explains (ANM vs label r on
    the simulated protein-disjoint CV, from the train run's JSON)."""
    s = result["summary"]
    lines = [DOC_BEGIN, "", f"Generated from the repository root by `.venv/bin/{result['command']} --docs ...`; "
             "do not edit by hand. Mean per-residue Pearson r with log10 MD C-alpha RMSF over the md_reference chains "
             f"(never trained on, nothing fitted to them), {result['maps_per_variant']} maps per chain; residue = "
             f"mean over {result['residue_atoms']} atoms. Models: "
             f"{', '.join(Path(m).name for m in result['models'])}.", "",
             "| maps (chains) | " + " | ".join(t for _, t in DOC_COLUMNS) + " |", "|---|" + "---|" * len(DOC_COLUMNS)]
    label = {"hard": "hard: Debye–Waller from MD RMSF + training confounders (in-family)",
             "clean": "clean: same, no confounders (in-family)",
             "frames": "frames: mean density of MD snapshots, model at their mean (in-family)",
             "image": "image formation: particle images of an ensemble with the MD RMSF, reconstructed (cross-family)",
             "image_frames": "image formation from the MD snapshots, model at their mean (cross-family)"}
    for v in VARIANTS:
        if v in s:
            lines.append(f"| {label[v]} ({s[v]['chains']}) | " + " | ".join(_mean(s[v], k) for k, _ in DOC_COLUMNS)
                         + " |")
    if any(s[v].get("fewer_chains") for v in s):
        lines += ["", FEWER_CHAINS_NOTE]
    lines += [""] + targets(s, result.get("expected_r"), result.get("sd_bands"))[2:-1] + [""]
    lines += paired_lines(result.get("chains") or [])
    lines += real_map_lines(result.get("real_map") or {})
    lines += abs_error_lines(result.get("chains") or [])
    lines += sd_band_lines(result.get("sd_bands") or {})
    lines += expected_lines(result.get("expected_r") or {})
    for p in train_jsons:
        d = json.loads(Path(p).read_text(encoding="utf-8"))
        what = ("atlas_train chains' engine maps, labels their ATLAS MD" if "atlas_samples" in d.get("command", "")
                else "simulated proteins")
        for kind, k in d.get("kinds", {}).items():
            cv = k.get("cv") or {}
            if "anm_r" in cv:
                lines.append(f"Training set ({repo_relative(p)}, {kind}, protein-disjoint CV on "
                             f"{cv['proteins']} {what}): network residue r {_f(cv['residue_r'])}"
                             + (f", with the density contrast (c = {cv['contrast_weight']:g}, fitted on that CV) "
                                f"{_f(cv['residue_r_with_contrast'])}"
                                if cv.get("contrast_weight") and not cv.get("native_contrast_weight") else "")
                             + (f", with the density contrasts (c = {cv.get('contrast_weight', 0.0):g} on the "
                                f"network's lattice, n = {cv['native_contrast_weight']:g} at the map's resolution, "
                                f"fitted together on that CV) {_f(cv['residue_r_with_contrast'])}"
                                if cv.get("native_contrast_weight") else "")
                             + (f", with the map's packing (voxel mode, weight {cv['map_packing_weight']:g} fitted on "
                                f"that CV) {_f(cv['residue_r_with_packing'])}"
                                if cv.get("map_packing_weight") and "residue_r_with_packing" in cv else "")
                             + (f", and with normal modes of the map's pseudo-atoms (voxel mode's normalModes, weight "
                                f"{cv['map_anm_weight']:g} fitted on that CV) {_f(cv['residue_r_with_map_anm'])}"
                                if cv.get("map_anm_weight") and "residue_r_with_map_anm" in cv else "")
                             + ", ANM of "
                             f"the structure vs the same labels {_f(cv['anm_r'])}; 68 % coverage "
                             f"{_f(cv['coverage68_calibrated'])} after sd_scale {cv['sd_scale']:.2f}; "
                             f"w = {cv['anm_weight']:g} (fitted on that CV).")
    return "\n".join(lines + ["", DOC_END])


def update_docs(paths: list[Path], block: str, begin: str = DOC_BEGIN, end: str = DOC_END) -> None:
    """Replace the text between the ``begin`` and ``end`` markers of each file (the markers must be there, and
    ``block`` starts and ends with them)."""
    for p in paths:
        text = Path(p).read_text(encoding="utf-8")
        if begin not in text or end not in text:
            raise SystemExit(f"{p} has no {begin} ... {end} block")
        head, rest = text.split(begin, 1)
        Path(p).write_text(head + block + rest.split(end, 1)[1], encoding="utf-8")


def _f(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3f}"


FEWER_CHAINS_NOTE = ("A mean marked (n N) is over the N chains where that column could be computed (voxel mode's "
                     "normal modes need pseudo-atoms within 15 Å of each other); compare it with the others on those "
                     "chains only, in the per-chain tables.")


def _mean(summary: dict, key: str) -> str:
    """A column's mean over chains, with (n N) when fewer chains than the row's had it."""
    n = (summary.get("fewer_chains") or {}).get(key)
    return _f(summary.get(key)) + (f" (n {n})" if n else "")


def run(a) -> dict:
    t0 = time.time()
    md_dir = Path(a.md_reference)
    dirs = [Path(d) for d in a.models]
    models = load_models(dirs)
    chains = [c for c in md_chains(md_dir) if not a.chains or c in a.chains.split(",")]
    res = []
    for c in chains:
        r = evaluate_chain(md_dir, c, models, a.maps_per_variant, a.residue_atoms, a.image_maps)
        res.append(r)
        print(f"{c}: " + "; ".join(f"{v} " + ", ".join(f"{k} {d[k]:.3f}" for k, _ in COLUMNS
                                                         if np.isfinite(d.get(k, np.nan)))
                                  for v, d in r["variants"].items()), flush=True)
    summary = {}
    for v in VARIANTS:
        ds = [c["variants"][v] for c in res if v in c["variants"]]
        if ds:
            keys = sorted({k for d in ds for k in d if k not in ("maps", "models")})
            summary[v] = {k: float(np.nanmean([d.get(k, np.nan) for d in ds])) for k in keys}
            counts = {k: int(np.isfinite([d.get(k, np.nan) for d in ds]).sum()) for k in keys}
            summary[v]["chains"] = len(ds)
            summary[v]["fewer_chains"] = {k: n for k, n in counts.items() if 0 < n < len(ds)}
    bands = sd_bands(res)
    runs = [e for c in res for e in c.pop("_expected", [])]
    for c in res:  # per-atom arrays: not for the JSON
        c.pop("_sd_err", None)
    cmd = "defmap-train validate-md " + " ".join(
        [f"--models {' '.join(repo_relative(d) for d in dirs)}", f"--maps-per-variant {a.maps_per_variant}",
         f"--image-maps {a.image_maps}",
         f"--residue-atoms {a.residue_atoms}"] + ([f"--chains {a.chains}"] if a.chains else []))
    result = {"command": cmd, "models": [repo_relative(m.path) for m in models],
              "residue_atoms": a.residue_atoms, "maps_per_variant": a.maps_per_variant, "chains": res,
              "summary": summary, "real_map": real_map_checks(models, a.residue_atoms),
              "sd_bands": bands, "expected_r": expected_report(runs), "expected_runs": runs,
              "seconds": round(time.time() - t0, 1)}
    text = markdown(result)
    print(text)
    if a.out:
        out = Path(a.out)
        write_json(out.with_suffix(".json"), result)
        out.with_suffix(".md").write_text("# validate-md (generated by `defmap-train validate-md`; do not edit)\n\n"
                                          + text, encoding="utf-8")
    if getattr(a, "docs", None):
        update_docs([Path(p) for p in a.docs], docs_block(result, [Path(p) for p in a.train_json or []]))
    return result
