"""Which per-residue quantities rank the real-MD errors of the map + model prediction?  A diagnostic for issue 11's
uncertainty target: it bounds what an SD built from them could reach, the MD truth's own |z-score| included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from chimerax.defmap import preprocess as pp
from chimerax.defmap.nma import anm_log_fluctuations, zscore

from .dataset import map_baselines
from .validate_md import (
    MD_DIR,
    VARIANTS,
    _rel,
    cached_maps,
    choose,
    load_chain,
    load_models,
    md_chains,
    residue_values,
    sd_error_spearman,
)


def _lag1(pred: np.ndarray, truth: np.ndarray) -> float:
    ok = np.isfinite(pred) & np.isfinite(truth)
    a, b = np.polyfit(pred[ok], truth[ok], 1)
    e = np.where(ok, truth - a * pred - b, 0.0)
    return float(np.corrcoef(e[:-1], e[1:])[0, 1])


def _contacts(ca: np.ndarray, cutoff: float = 10.0) -> np.ndarray:
    """C-alpha neighbours within ``cutoff`` Å: buried residues move less, and may be predicted more surely."""
    return (np.linalg.norm(ca[:, None] - ca[None], axis=-1) < cutoff).sum(axis=1) - 1.0


FEATURES = {
    "prediction z-score": lambda d: d["z"],
    "head SD": lambda d: d["sd"],
    "shipped SD (calibrated)": lambda d: d["sd_shipped"],
    "contact number": lambda d: d["contacts"],
    "distance from a chain end (negated)": lambda d: -d["from_end"],
    "abs(z - z(contrast))": lambda d: np.abs(d["z"] - d["contrast"]),
    "abs(z - z(map-only)) (a second network's cost)": lambda d: np.abs(d["z"] - d["z_map"]),
    "abs(z - z(ANM)) (ANM's cost)": lambda d: np.abs(d["z"] - d["anm"]),
    "z + abs(z - z(ANM)) (ANM's cost)": lambda d: d["z"] + np.abs(d["z"] - d["anm"]),
    "raw intensity z-score": lambda d: d["raw"],
    "oracle: MD z-score": lambda d: d["truth_z"],
    "oracle: abs(MD z-score)": lambda d: np.abs(d["truth_z"]),
}


def run(a) -> dict:
    kinds = load_models([Path(m) for m in a.models])
    models, map_models = kinds["map+model"], kinds["map"]
    if not models or not map_models:
        raise SystemExit(f"need map + model and map-only ONNX models in {a.models}")
    per: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    for name in md_chains(MD_DIR):
        st, md = load_chain(MD_DIR, name)
        truth = np.log10(md)
        for m in cached_maps(MD_DIR, name, a.maps_per_variant):
            xyz, vs, res = np.asarray(m["xyz"], float), float(m["voxel_size"]), float(m["resolution"])
            x2i, _ = pp.grid_transforms(m["origin"], (vs,) * 3)
            values = np.asarray(m["values"], np.float32)
            mod = choose(models, res)
            mean, sd = mod.predict(values, x2i, xyz, st.element, res)

            def per_res(v, st=st):
                return residue_values(v, st.res_index, st.atom_name, st.n_res, "backbone")

            pred = mod.reported_values(per_res(mean), per_res)
            n = st.n_res
            d = {"z": zscore(pred), "sd": per_res(sd), "sd_shipped": per_res(mod.calibrated_sd(mean, sd)),
                 "contrast": zscore(per_res(mod.last_contrast)), "contacts": _contacts(xyz[st.ca_index()]),
                 "from_end": np.minimum(np.arange(n), n - 1 - np.arange(n)).astype(float),
                 "z_map": zscore(per_res(choose(map_models, res).predict(values, x2i, xyz, st.element, res)[0])),
                 "anm": zscore(anm_log_fluctuations(xyz[st.ca_index()])),
                 "raw": zscore(per_res(map_baselines(values, x2i, xyz, vs)["raw_intensity"])),
                 "truth_z": zscore(truth)}
            row = per[str(m["variant"])].setdefault(name, [])
            row.append({k: sd_error_spearman(pred, f(d), truth) for k, f in FEATURES.items()}  # validate-md's error
                       | {"lag-1 autocorrelation of the errors": _lag1(pred, truth)})
        print(name, flush=True)
    out = {"command": "defmap-train sd-probe --models " + " ".join(_rel(m) for m in a.models), "variants": {}}
    for v, chains in per.items():
        keys = list(next(iter(chains.values()))[0])
        out["variants"][v] = {k: float(np.nanmean([np.nanmean([r[k] for r in rs]) for rs in chains.values()]))
                              for k in keys}
    lines = [f"Command: `{out['command']}` (structure mode's prediction: map + model network with the density "
             "contrast; mean over chains of the per-map Spearman with abs error, error as validate-md)", "",
             "| quantity | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    for k in out["variants"][VARIANTS[0]]:
        lines.append(f"| {k} | " + " | ".join(f"{out['variants'][v][k]:.3f}" for v in VARIANTS) + " |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).with_suffix(".md").write_text("# sd-probe (generated; do not edit)\n\n" + text + "\n",
                                                   encoding="utf-8")
        Path(a.out).with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return out
