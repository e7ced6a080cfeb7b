"""``defmap-train md-units``: fit the calibration that puts structure mode's values in MD units (``md_units.py``).

On the 66 atlas_train chains only (ATLAS MD, CHARMM36m, 300 K, 3 x 100 ns; md_reference is never read):

* the level: ridge regression of each chain's mean log10 MD C-alpha RMSF on its ``level_features``, reported as
  protein-disjoint 5-fold CV mean |error| beside a constant level;
* per model kind, the spread: least squares of (log10 MD - the chain's MD mean) on the within-structure z-score of
  what structure mode reports, pooled over the chains' hard engine maps (``atlas_eval``; in-family);
* per model kind, the SD factor: the 68th percentile of |error| / SD, the error taken after each map's line of MD on
  the value in MD units and the SD times that line's slope (as validate-md's ``sd_bands``), so 68 % intervals cover
  68 % on these maps.

Writes ``onnx_models/prior/md_units.json`` (what the bundle reads), a report JSON and, when it writes the shipped
file, the model card's block between the md-units markers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from chimerax.defmap import md_units
from chimerax.defmap.combination import zscore

from .atlas_eval import all_results
from .atlas_train import chains, folds, load_chain
from .paths import REPO, repo_relative, write_json
from .validate_md import update_docs

REPORT = Path("training/reports/md_units.json")  # from the repository root
SHIPPED = Path("onnx_models/prior/md_units.json")
CARD = REPO / "onnx_models" / "MODEL_CARD.md"
DOC_BEGIN, DOC_END = "<!-- md-units:begin -->", "<!-- md-units:end -->"
FEATURE_WORDS = {"heavy12": "heavy atoms within 12 Å of each C-alpha", "wcn": "weighted contact number",
                 "loop": "loop fraction", "log_residues": "log residues",
                 "hse_down": "C-alpha atoms in the half sphere facing away from each side chain, HSE-down"}
ALPHA = 1.0  # ridge penalty on z-scored level features
FIT_VARIANT = "hard"


def chain_levels(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(level features per chain, mean log10 MD RMSF per chain)."""
    x, y = [], []
    for n in names:
        st, rmsf = load_chain(n)
        ca = st.ca_index()
        x.append(md_units.level_features(st.xyz[ca], st.xyz))
        y.append(float(np.nanmean(np.log10(rmsf))))
    return np.array(x), np.array(y)


def ridge(x: np.ndarray, y: np.ndarray, alpha: float = ALPHA, features=md_units.LEVEL_FEATURES) -> dict:
    """Ridge regression of ``y`` on z-scored columns of ``x`` (named ``features``), in the form the bundle reads."""
    mean, scale = x.mean(0), x.std(0) + 1e-12
    a = (x - mean) / scale
    coef = np.linalg.solve(a.T @ a + alpha * np.eye(x.shape[1]), a.T @ (y - y.mean()))
    return {"features": list(features), "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": coef.tolist(), "intercept": float(y.mean()), "low": x.min(0).tolist(), "high": x.max(0).tolist()}


def predict_level(level: dict, x: np.ndarray) -> np.ndarray:
    """The level the bundle computes (``md_units.Scale.level``) for each row of features."""
    scale = md_units.scale_from_dict({"level": level, "spread": {}, "sd_factor": {}})
    return np.array([scale.level(r)[0] for r in x])


def fit_spread(rows: list[dict]) -> float:
    num = den = 0.0
    for r in rows:
        z, y = zscore(r["reported"]), r["truth"]
        ok = np.isfinite(z) & np.isfinite(y)
        num += float(((y[ok] - y[ok].mean()) * z[ok]).sum())
        den += float((z[ok] ** 2).sum())
    return num / den


def sd_ratios(rows: list[dict], spread: float) -> np.ndarray:
    """|error| / SD per residue, pooled: error after each map's line of MD on the value in MD units."""
    out = []
    for r in rows:
        if "sd" not in r:
            continue
        v, y = r["reported"], r["truth"]
        width = float(np.nanstd(v))
        pred = spread * zscore(v)
        sd = r["sd"] * spread / width
        ok = np.isfinite(pred) & np.isfinite(y) & np.isfinite(sd) & (sd > 0)
        a, b = np.polyfit(pred[ok], y[ok], 1)
        out.append(np.abs(y[ok] - (a * pred[ok] + b)) / (sd[ok] * abs(a)))
    return np.concatenate(out) if out else np.zeros(0)


def run(models_dir: Path, out: Path, shipped: Path) -> dict:
    names = chains()
    x, y = chain_levels(names)
    fold = folds(names, 5)
    cv = np.zeros(len(y))
    for k in range(5):
        tr = np.array([fold[n] != k for n in names])
        cv[~tr] = predict_level(ridge(x[tr], y[tr]), x[~tr])
    level = ridge(x, y)
    cv_level = dict(zip(names, cv))
    rows = all_results(models_dir, names)
    spread, sd_factor, report_kind = {}, {}, {}
    for kind in sorted({r["kind"] for r in rows}):
        fit_rows = [r for r in rows if r["kind"] == kind and r["variant"] == FIT_VARIANT]
        k = spread[kind] = fit_spread(fit_rows)
        ratios = sd_ratios(fit_rows, k)
        if len(ratios):
            sd_factor[kind] = float(np.quantile(ratios, 0.68))
        per_variant = {}
        for variant in sorted({r["variant"] for r in rows}):
            errs = []
            for r in rows:
                if r["kind"] == kind and r["variant"] == variant:
                    pred = cv_level[r["chain"]] + k * zscore(r["reported"])
                    ok = np.isfinite(pred) & np.isfinite(r["truth"])
                    errs.append(float(np.median(np.abs(pred[ok] - r["truth"][ok]))))
            per_variant[variant] = float(np.mean(errs))
        report_kind[kind] = {"spread": k, "sd_factor": sd_factor.get(kind),
                             "maps": len(fit_rows),
                             "mean_per_map_median_abs_error_cv_level": per_variant}
    shipped_d = {"md": md_units.MD, "fitted_on": f"{len(names)} atlas_train chains (ATLAS MD), never md_reference; "
                 f"spread and SD factor on their {FIT_VARIANT} engine maps (in-family)",
                 "command": "defmap-train md-units", "level": level, "spread": spread, "sd_factor": sd_factor}
    report = {"command": "defmap-train md-units --models onnx_models", "chains": len(names),
              "level_cv_mean_abs_error": float(np.mean(np.abs(cv - y))),
              "constant_level_mean_abs_error_in_sample": float(np.mean(np.abs(y - y.mean()))),
              "chain_mean_log10_sd": float(y.std()), "kinds": report_kind,
              "written": repo_relative(shipped)}
    write_json(shipped, shipped_d)
    write_json(out, report)
    if Path(shipped).resolve() == (REPO / SHIPPED).resolve() and CARD.is_file():
        update_docs([CARD], docs_block(report), DOC_BEGIN, DOC_END)
    return report


def docs_block(report: dict) -> str:
    """The model card's figures for the fit in ``report`` (what ``run`` returns), between the md-units markers."""
    k = report["kinds"]
    mm, m = k.get("map+model", {}), k.get("map", {})
    err = mm.get("mean_per_map_median_abs_error_cv_level", {})
    features = ", ".join(FEATURE_WORDS.get(f, f) for f in md_units.LEVEL_FEATURES)
    nan = float("nan")
    return "\n".join([
        DOC_BEGIN,
        f"- The level (the structure's mean log10 RMSF) is a ridge fit on the structure's packing ({features}): "
        f"protein-disjoint 5-fold CV mean |error| {report['level_cv_mean_abs_error']:.3f} log10 units, against "
        f"{report['constant_level_mean_abs_error_in_sample']:.3f} for one constant level (in-sample); the chains' "
        f"mean log10 RMSF spread by SD {report['chain_mean_log10_sd']:.3f}. Real MD, no map.",
        f"- The spread is fitted on the chains' hard engine maps (in-family): {mm.get('spread', nan):.3f} (map + "
        f"model) and {m.get('spread', nan):.3f} (map-only) log10 units per unit z. With the CV level, the mean over "
        f"those maps of the per-map median |value − MD| is {err.get('hard', nan):.3f} on hard and "
        f"{err.get('clean', nan):.3f} on clean maps (map + model; in-family).",
        f"- The SD goes through the same map and is multiplied by {mm.get('sd_factor') or nan:.2f} (map + model) / "
        f"{m.get('sd_factor') or nan:.2f} (map-only) so that 68 % intervals cover 68 % of the errors after each "
        "map's line fit on those maps (in-family).",
        DOC_END])


def add_parser(sub) -> None:
    p = sub.add_parser("md-units", help="fit the calibration to MD units on atlas_train (md_units.json)")
    p.add_argument("--models", type=Path, default=Path("onnx_models"))
    p.add_argument("--out", type=Path, default=REPORT)
    p.add_argument("--shipped", type=Path, default=SHIPPED)
    p.set_defaults(fn=lambda a: print(json.dumps(run(a.models, a.out, a.shipped), indent=1)))
