"""Which per-residue quantities rank the real-MD errors of the map + model prediction?  ``defmap-train sd-probe``: it
bounds what an SD built from them could reach (the target is Spearman(SD, |error|) ≥ 0.3), the MD truth's own
|z-score| included; and, for the SD's top/bottom-third error ratio pooled over maps (validate-md's ``sd_bands``), how
much of it each map's SD level carries, with that level set by what the run measures or by the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from chimerax.defmap import preprocess as pp
from chimerax.defmap.combination import zscore
from chimerax.defmap.expected import error_factor
from chimerax.defmap.nma import anm_log_fluctuations

from ..dataset import map_baselines
from ..md_reference import MD_DIR, load_chain, md_chains
from ..paths import repo_relative, write_json
from ..validate_md import (
    ENGINE_VARIANTS,
    VARIANTS,
    cached_maps,
    image_maps,
    line_errors,
    load_models,
    model_volume_level,
    pearson,
    pick,
    residue_values,
    sd_and_errors,
    sd_error_spearman,
    structure_mode,
    top_third_ratio,
    voxel_mode,
)


def _errors(pred: np.ndarray, truth: np.ndarray, fill: float) -> np.ndarray:
    """validate-md's per-residue errors (``line_errors``), ``fill`` where the prediction or truth is missing."""
    ok = np.isfinite(pred) & np.isfinite(truth)
    e = np.full(len(truth), fill)
    e[ok] = line_errors(pred, truth, ok)
    return e


def _lag1(pred: np.ndarray, truth: np.ndarray) -> float:
    e = _errors(pred, truth, 0.0)
    return float(np.corrcoef(e[:-1], e[1:])[0, 1])


def _contacts(ca: np.ndarray, cutoff: float = 10.0) -> np.ndarray:
    """C-alpha neighbours within ``cutoff`` Å: buried residues move less, and may be predicted more surely."""
    return (np.linalg.norm(ca[:, None] - ca[None], axis=-1) < cutoff).sum(axis=1) - 1.0


def _wcn(ca: np.ndarray) -> np.ndarray:
    """Minus the log weighted contact number of each C-alpha (sum of 1/r^2 over the others): a B-factor predictor
    nearly as good as ANM at a fraction of its cost."""
    d2 = ((ca[:, None] - ca[None]) ** 2).sum(axis=-1)
    np.fill_diagonal(d2, np.inf)
    return -np.log((1.0 / d2).sum(axis=1))


FEATURES = {
    "prediction z-score": lambda d: d["z"],
    "head SD": lambda d: d["sd"],
    "shipped SD (calibrated)": lambda d: d["sd_shipped"],
    "contact number": lambda d: d["contacts"],
    "distance from a chain end (negated)": lambda d: -d["from_end"],
    "abs(z - z(contrast))": lambda d: np.abs(d["z"] - d["contrast"]),
    "abs(z - z(contrast at map resolution))": lambda d: np.abs(d["z"] - d["native"]),
    "abs(z - z(WCN of the model))": lambda d: np.abs(d["z"] - d["wcn"]),
    "abs(z - z(map-only)) (a second network's cost)": lambda d: np.abs(d["z"] - d["z_map"]),
    "abs(z - z(ANM)) (ANM's cost)": lambda d: np.abs(d["z"] - d["anm"]),
    "z + abs(z - z(ANM)) (ANM's cost)": lambda d: d["z"] + np.abs(d["z"] - d["anm"]),
    "raw intensity z-score": lambda d: d["raw"],
    "z-score of ANM": lambda d: d["anm"],
    "z-score of WCN of the model": lambda d: d["wcn"],
    "oracle: MD z-score": lambda d: d["truth_z"],
    "oracle: abs(MD z-score)": lambda d: np.abs(d["truth_z"]),
}


FITTED = "least-squares fit of log abs error on all the quantities above but the oracles (leave-one-chain-out)"


def _loo_fit(fits: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]) -> list[float]:
    """Per map, Spearman(a linear score of the quantities, abs error), the score's weights fitted by least squares on
    log abs error over every other chain: what an SD built from all of them together could reach."""
    out = []
    for name, _, x, pred, truth in fits:
        rest = [(x2, np.abs(_errors(p2, t2, np.nan))) for n2, _, x2, p2, t2 in fits if n2 != name]
        xs = np.concatenate([x2 for x2, _ in rest])
        ys = np.log(np.concatenate([e2 for _, e2 in rest]) + 1e-3)
        ok = np.isfinite(xs).all(axis=1) & np.isfinite(ys)
        w = np.linalg.lstsq(np.c_[xs[ok], np.ones(ok.sum())], ys[ok], rcond=None)[0]
        out.append(sd_error_spearman(pred, np.c_[x, np.ones(len(x))] @ w, truth))
    return out


LEVELS = {  # each map's SD times a factor that sets its mean, in MD's units (the reported SD times the map's |slope|
    # of MD on the prediction, as validate-md takes it), to ...
    "shipped SD": None,
    "spread x error_factor(expected r)": lambda m: m["slope"] * m["spread"] * error_factor(m["expected_r"]),
    "oracle: spread x error_factor(r halfway in Fisher z from the expected to the actual)":
        lambda m: m["slope"] * m["spread"] * error_factor(halfway_r(m)),
    "oracle: spread x error_factor(actual r)": lambda m: m["slope"] * m["spread"] * error_factor(m["r"]),
    "oracle: the map's mean abs error": lambda m: float(np.mean(m["abs_error"])),
}


def halfway_r(m: dict) -> float:
    """The r halfway in Fisher z between a map's expected and actual r: how good a per-run predictor of r would
    have to be for the row that uses it (its Spearman with the actual r is in the report)."""
    return float(np.tanh(0.5 * (np.arctanh(m["expected_r"]) + np.arctanh(m["r"]))))


def run_spearman(maps: list[dict], r_of) -> float:
    """Spearman between ``r_of(map)`` and the maps' actual r."""
    return float(stats.spearmanr([r_of(m) for m in maps], [m["r"] for m in maps]).statistic)


def tercile_ratio(maps: list[dict], level) -> float:
    """validate-md's top/bottom-third mean abs error of the SD pooled over ``maps``, each map's SD (in MD's units,
    ``sd_and_errors``) scaled so its mean is ``level(map)`` (``None``: as reported), the shape within a map kept."""
    sd = np.concatenate([m["sd"] if level is None else m["sd"] * level(m) / m["sd"].mean() for m in maps])
    return top_third_ratio(sd, np.concatenate([m["abs_error"] for m in maps]))


def level_entry(sm: dict, truth: np.ndarray) -> dict | None:
    """One map's entry for the levels table from its ``structure_mode`` result: the SD (in MD's units) and abs error
    per residue, with the run's spread (SD of its values), |slope| of MD on its values, expected r and actual r."""
    pred, pair = sm["reported"], sd_and_errors(sm["reported"], sm["sd"], truth)
    if pair is None or sm["expected"] is None:
        return None
    ok = np.isfinite(pred) & np.isfinite(sm["sd"]) & np.isfinite(truth)
    return {"sd": pair[0], "abs_error": np.abs(pair[1]), "spread": float(pred[ok].std()),
            "slope": float(pair[0].mean() / sm["sd"][ok].mean()), "r": pearson(pred, truth),
            "expected_r": float(sm["expected"].r)}


def image_level_maps(models, image: int) -> dict[str, list[dict]]:
    """``level_entry`` per image-formation map, by kind (the engine maps' come from ``run``'s own loop)."""
    out: dict[str, list[dict]] = {}
    for name in md_chains(MD_DIR):
        st, md = load_chain(MD_DIR, name)
        for m in image_maps(MD_DIR, name, image):
            sm = structure_mode(pick(models, float(m["resolution"]), structure=True), st, m, "backbone",
                                normal_modes=False)
            entry = level_entry(sm, np.log10(md))
            if entry is not None:
                out.setdefault(str(m["variant"]), []).append(entry)
    return out


def run(a) -> dict:
    models = load_models([Path(m) for m in a.models])
    if not any(m.needs_structure for m in models) or all(m.needs_structure for m in models):
        raise SystemExit(f"need map + model and map-only ONNX models in {a.models}")
    per: dict[str, dict[str, list[float]]] = {v: {} for v in ENGINE_VARIANTS}
    fits: list[tuple] = []  # per map: chain, variant, quantities (residues x quantities), prediction, truth
    by_kind: dict[str, list[dict]] = {}  # per kind of map: ``level_entry`` per map
    for name in md_chains(MD_DIR):
        st, md = load_chain(MD_DIR, name)
        truth = np.log10(md)
        for m in cached_maps(MD_DIR, name, a.maps_per_variant):
            xyz, vs, res = np.asarray(m["xyz"], float), float(m["voxel_size"]), float(m["resolution"])
            x2i, _ = pp.grid_transforms(m["origin"], (vs,) * 3)
            values = np.asarray(m["values"], np.float32)
            sm = structure_mode(pick(models, res, structure=True), st, m, "backbone")
            entry = level_entry(sm, truth)
            if entry is not None:
                by_kind.setdefault(str(m["variant"]), []).append(entry)
            vox = voxel_mode(pick(models, res, structure=False), m, model_volume_level(values, st.n_res, vs))

            def per_res(v, st=st):
                return residue_values(v, st.res_index, st.atom_name, st.n_res, "backbone")

            pred = sm["reported"]
            n = st.n_res
            d = {"z": zscore(pred), "sd": per_res(sm["atom_head_sd"]), "sd_shipped": sm["sd"],
                 "contrast": zscore(sm["contrast"]), "contacts": _contacts(xyz[st.ca_index()]),
                 "native": zscore(sm["native_contrast"]), "wcn": zscore(_wcn(xyz[st.ca_index()])),
                 "from_end": np.minimum(np.arange(n), n - 1 - np.arange(n)).astype(float),
                 "z_map": zscore(per_res(vox.values_at(xyz))),
                 "anm": zscore(anm_log_fluctuations(xyz[st.ca_index()])),
                 "raw": zscore(per_res(map_baselines(values, x2i, xyz, vs)["raw_intensity"])),
                 "truth_z": zscore(truth)}
            row = per[str(m["variant"])].setdefault(name, [])
            row.append({k: sd_error_spearman(pred, f(d), truth) for k, f in FEATURES.items()}  # validate-md's error
                       | {"lag-1 autocorrelation of the errors": _lag1(pred, truth)})
            fits.append((name, str(m["variant"]), np.stack([f(d) for k, f in FEATURES.items()
                                                            if not k.startswith("oracle")], axis=1),
                         pred, truth))
        print(name, flush=True)
    for (name, v, *_), sp in zip(fits, _loo_fit(fits)):  # in the order the maps' rows were appended
        next(r for r in per[v][name] if FITTED not in r)[FITTED] = sp
    out = {"command": "defmap-train sd-probe --models " + " ".join(repo_relative(m) for m in a.models)
           + f" --image-maps {a.image_maps}", "variants": {}}
    for v, chains in per.items():
        keys = list(next(iter(chains.values()))[0])
        out["variants"][v] = {k: float(np.nanmean([np.nanmean([r[k] for r in rs]) for rs in chains.values()]))
                              for k in keys}
    lines = [f"Command: `{out['command']}` (structure mode's prediction: map + model network with the density "
             "contrast; mean over chains of the per-map Spearman with abs error, error as validate-md)", "",
             "| quantity | " + " | ".join(ENGINE_VARIANTS) + " |", "|---|" + "---|" * len(ENGINE_VARIANTS)]
    for k in out["variants"][ENGINE_VARIANTS[0]]:
        lines.append(f"| {k} | " + " | ".join(f"{out['variants'][v][k]:.3f}" for v in ENGINE_VARIANTS) + " |")
    by_kind |= image_level_maps(models, a.image_maps)
    kinds = [v for v in VARIANTS if v in by_kind]
    out["levels"] = {k: {v: tercile_ratio(by_kind[v], f) for v in kinds} for k, f in LEVELS.items()}
    lines += ["", "The SD's top/bottom-third mean abs error pooled over maps (validate-md's tercile ratio; target "
              "≥ 1.5), with each map's SD level set as the row says and its shape within the map kept "
              f"(`--image-maps {a.image_maps}`):", "",
              "| each map's SD level | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    lines += [f"| {k} | " + " | ".join(f"{out['levels'][k][v]:.2f}" for v in kinds) + " |" for k in LEVELS]
    out["run_spearman"] = {k: {v: run_spearman(by_kind[v], f) for v in kinds}
                           for k, f in {"expected r": lambda m: m["expected_r"], "r halfway": halfway_r}.items()}
    lines += ["", "Spearman of each per-run r with the maps' actual r, per kind:", "",
              "| per-run r | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    lines += [f"| {k} | " + " | ".join(f"{out['run_spearman'][k][v]:.2f}" for v in kinds) + " |"
              for k in out["run_spearman"]]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).with_suffix(".md").write_text("# sd-probe (generated; do not edit)\n\n" + text + "\n",
                                                   encoding="utf-8")
        write_json(Path(a.out).with_suffix(".json"), out)
    return out
