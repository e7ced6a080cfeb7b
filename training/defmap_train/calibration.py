"""What the protein-disjoint CV measures and the calibration fitted on it (never on md_reference).

:func:`item_rows` scores one test map of a fold model: per protein, residue r of the network, residue r of ANM of
the structure (how much of the labels the structure alone explains), the |z| of the errors (68 % interval
coverage) and Spearman(SD, |error|).  :func:`summarize` turns a CV's rows into the numbers the exported models store
under ``calibration``: ``sd_scale`` (the SD multiplier that gives 68 % coverage on the CV), ``contrast_weight`` and
``native_contrast_weight`` (map + model only: weights c and n of z(model density − map density at the atom on the
network's lattice, ``preprocess.density_contrast``) and of z(the same at the map's own resolution and sampling,
``preprocess.native_contrast``) in structure mode's z(network) + c z(contrast) + n z(native contrast), fitted
together on a grid to maximize the mean CV residue r), ``map_packing_weight`` and ``map_anm_weight`` (map-only:
weights k of z(the contour's packing around each voxel, ``map_shape.map_packing``; voxel mode's default) and then e
of z(normal modes of the map's own pseudo-atoms, ``nma.map_elastic_network``; voxel mode's ``normalModes``), the
contour enclosing the protein's volume, fitted on the mean over the kinds of test map) and ``anm_weight`` (weight w
of z(ANM) added to structure mode's values with ``normalModes``; 0 means the prior is dropped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from chimerax.defmap.combination import zscore
from chimerax.defmap.map_shape import RESIDUE_VOLUME, map_packing
from chimerax.defmap.network import calibrated_sd
from chimerax.defmap.nma import anm_log_fluctuations, map_elastic_network
from chimerax.defmap.preprocess import density_contrast, element_weights, native_contrast, rigid_density_at

from .dataset import Item, map_kind
from .train import atom_predictions, pearson, predict_item

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
    return {"protein": it.protein, "map_kind": map_kind(it.path), "label_source": it.label_source,
            "residue_r": pearson(pr, lab),
            "anm_r": pearson(anm, lab),
            "atom_r": pearson(pa, it.log_rmsf), "sd_spearman": float(stats.spearmanr(sr[good], err).statistic),
            "z_abs": (np.abs(it.labels[ok] - mu[ok]) / sd_c[ok]).tolist(),  # centre voxels, absolute scale
            "_res": (pr[good], anm[good], lab[good], con[good], nat[good], man[good], pak[good])}


def summarize(all_rows: list[dict], sd_scale: float = 1.0) -> dict:
    """CV metrics and the fitted calibration.  The headline metrics, sd_scale and structure mode's weights come from
    the frame-averaged test maps (map kind "map"); voxel mode's weights are fitted on the mean over every kind of test
    map there is (frame-averaged, Debye-Waller, clean), since a term that fits one kind can cost another (the map's
    normal modes, weighted 0.95 when fitted on frame-averaged maps alone, cost clean real-MD maps)."""
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
