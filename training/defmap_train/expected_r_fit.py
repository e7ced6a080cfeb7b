"""``defmap-train expected-r``: fit the per-run expected agreement with MD (``expected.py``) on atlas_train.

For every engine map of the 66 atlas_train chains (``atlas_eval``: hard and clean, in-family; md_reference is never
read) it runs the bundle's recipe in each mode — structure mode (``defmap MAP structure MODEL``) and voxel mode
(``defmap MAP``, the map choosing its level, read at the chain's atoms) — and records the run's features and the
per-residue Pearson r of what it reports with log10 ATLAS MD RMSF.  Per mode, ridge regression of Fisher z(r) on the
features; protein-disjoint 5-fold CV gives the honest Spearman and the residual SD that becomes the 68 % range.

Writes ``onnx_models/prior/expected_r.json`` (what the bundle reads) and a report JSON.  Runs are cached per chain
and set of model files under ``training/data/atlas_eval/expected`` (about 5 min on 2 cores the first time; a
stopped run resumes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

from chimerax.defmap import expected

from .atlas_eval import CACHE as ATLAS_CACHE
from .atlas_eval import chain_maps, models_key
from .atlas_train import chains, folds, load_chain
from .md_units_fit import ridge
from .paths import repo_relative, write_json
from .validate_md import load_models, pearson, pick, residue_values, structure_mode, voxel_mode

CACHE = ATLAS_CACHE / "expected"
REPORT = Path("training/reports/expected_r.json")  # from the repository root
SHIPPED = Path("onnx_models/prior/expected_r.json")
ALPHA = 3.0  # ridge penalty on z-scored run features
R_CLIP = 0.98  # Fisher z of |r| above this is cut there (one near-perfect run should not dominate)


def chain_runs(name: str, models, residue_atoms: str = "backbone") -> list[dict]:
    """Per map of the chain and mode: the run's features and its r with MD (cached)."""
    f = CACHE / models_key(models) / f"{name}.json"
    if f.exists():
        return json.loads(f.read_text(encoding="utf-8"))
    st, rmsf = load_chain(name)
    truth = np.log10(rmsf)
    out = []
    for i, m in enumerate(chain_maps(name)):
        res = float(m["resolution"])
        base = {"chain": name, "map": i, "variant": m["variant"], "resolution": res}
        info = pick(models, res, True)
        if info is not None:
            sm = structure_mode(info, st, m, residue_atoms, normal_modes=False)
            out.append({**base, "mode": "structure", "features": sm["run_features"],
                        "r": pearson(sm["reported"], truth)})
        info = pick(models, res, False)
        if info is not None:
            vp = voxel_mode(info, m, None)
            at = vp.values_at(np.asarray(m["xyz"], dtype=np.float64))
            r = pearson(residue_values(at, st.res_index, st.atom_name, st.n_res, residue_atoms), truth)
            out.append({**base, "mode": "voxel", "features": vp.run_features, "r": r})
    write_json(f, out, indent=None)
    return out


def fisher(r: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(np.asarray(r, dtype=np.float64), -R_CLIP, R_CLIP))


def design(runs: list[dict], mode: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features per run, Fisher z of its r, its chain) for one mode's runs with a finite r."""
    names = expected.FEATURES[mode]
    use = [r for r in runs if r["mode"] == mode and np.isfinite(r["r"])]
    x = np.array([[float(r["features"][k]) for k in names] for r in use])
    return x, fisher([r["r"] for r in use]), [r["chain"] for r in use]


def fit_mode(x: np.ndarray, y: np.ndarray, chain: list[str], mode: str) -> tuple[dict, dict]:
    """(the shipped model, its CV report): ridge on all runs; the range's SD and the Spearman from 5-fold CV."""
    names = expected.FEATURES[mode]
    fold = folds(sorted(set(chain)), 5)
    k = np.array([fold[c] for c in chain])
    cv = np.zeros(len(y))
    for f in range(5):
        m = expected.model_from_dict({**ridge(x[k != f], y[k != f], ALPHA, names), "resid_sd": 0.0})
        cv[k == f] = [np.arctanh(m.predict(dict(zip(names, row))).r) for row in x[k == f]]
    resid_sd = float(np.std(y - cv))
    model = {**ridge(x, y, ALPHA, names), "resid_sd": resid_sd}
    inside = np.abs(y - cv) <= resid_sd
    report = {"runs": len(y), "chains": len(set(chain)),
              "cv_spearman": float(stats.spearmanr(cv, y).statistic),
              "cv_pearson_z": float(np.corrcoef(cv, y)[0, 1]),
              "cv_resid_sd_z": resid_sd, "cv_within_range": float(np.mean(inside)),
              "mean_r": float(np.mean(np.tanh(y))), "sd_r": float(np.std(np.tanh(y))),
              "coef": dict(zip(names, np.round(model["coef"], 4).tolist()))}
    return model, report


def run(models_dir: Path, out: Path, shipped: Path) -> dict:
    models = load_models([Path(models_dir)])
    runs = []
    for name in chains():
        runs += chain_runs(name, models)
        print(f"{name}: {len(runs)} runs", flush=True)
    modes, report = {}, {}
    for mode in expected.FEATURES:
        x, y, chain = design(runs, mode)
        modes[mode], report[mode] = fit_mode(x, y, chain, mode)
    shipped_d = {"fitted_on": f"{len(chains())} atlas_train chains (ATLAS MD), their hard and clean engine maps "
                 "(in-family), never md_reference", "command": "defmap-train expected-r", "modes": modes}
    write_json(shipped, shipped_d)
    result = {"command": "defmap-train expected-r --models onnx_models", "modes": report,
              "written": repo_relative(shipped)}
    write_json(out, result)
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("expected-r", help="fit the per-run expected r with MD on atlas_train (expected_r.json)")
    p.add_argument("--models", type=Path, default=Path("onnx_models"))
    p.add_argument("--out", type=Path, default=REPORT)
    p.add_argument("--shipped", type=Path, default=SHIPPED)
    p.set_defaults(fn=lambda a: print(json.dumps(run(a.models, a.out, a.shipped), indent=1)))
