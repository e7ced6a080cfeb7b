"""``defmap-train prior``: fit the bundle's structure prior (``chimerax.defmap.structure_prior``) to real MD.

Per residue, the target is log10 ATLAS MD C-alpha RMSF z-scored within its chain (the prior ranks residues; the
recipe combines it by z-score), the inputs the bundle's own features of the chain's structure.  A linear model, ridge
fitted in closed form with PyTorch: on 66 chains a gradient-boosted model did no better (protein-disjoint CV r 0.797 for
both).  Reported: protein-disjoint k-fold CV on atlas_train, per chain, beside plain ANM of the same structure.  Then
the model fitted on all chains is exported to ONNX with the features and the CV in its metadata.  md_reference is not
read here; ``validate-md`` reports the prior on it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from chimerax.defmap import structure_prior as sp

from .atlas_train import ATLAS_TRAIN, chains, folds, load_chain
from .paths import repo_relative, write_json

ALPHA = 10.0  # ridge penalty on z-scored features (CV r changed < 0.003 over 0.1-100)


def chain_data(name: str, root: Path = ATLAS_TRAIN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features per C-alpha, within-chain z of log10 MD RMSF at them (NaN: no MD row), plain ANM at them)."""
    st, rmsf = load_chain(name, root)
    ca = st.ca_index()
    f = sp.raw_features(st.xyz[ca], st.xyz)
    x = sp.feature_matrix(f)
    y = np.log10(rmsf[st.res_index[ca]])
    ok = np.isfinite(y)
    z = np.full(len(y), np.nan)
    z[ok] = (y[ok] - y[ok].mean()) / y[ok].std()
    return x, z, f["anm"]


def fit(xs: list[np.ndarray], ys: list[np.ndarray], alpha: float = ALPHA) -> torch.nn.Linear:
    """Ridge regression of the z targets on the features, in closed form (float64), as a torch Linear layer."""
    x = torch.from_numpy(np.concatenate(xs)).double()
    y = torch.from_numpy(np.concatenate(ys)).double()
    ok = torch.isfinite(y)
    x, y = x[ok], y[ok]
    xm, ym = x.mean(0), y.mean()
    xc = x - xm
    w = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y - ym))
    lin = torch.nn.Linear(x.shape[1], 1)
    with torch.no_grad():
        lin.weight.copy_(w.reshape(1, -1).float())
        lin.bias.copy_((ym - xm @ w).reshape(1).float())
    return lin


def _r(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 and a[ok].std() > 0 else float("nan")


def cross_validate(data: dict[str, tuple], k: int = 5, seed: int = 0) -> dict[str, dict]:
    """Per chain: r of the prior fitted on the other folds, and r of plain ANM, with log10 MD RMSF."""
    fold = folds(sorted(data), k, seed)
    out = {}
    for j in range(k):
        train = [n for n in data if fold[n] != j]
        lin = fit([data[n][0] for n in train], [data[n][1] for n in train])
        for n in (n for n in data if fold[n] == j):
            x, z, anm = data[n]
            with torch.no_grad():
                p = lin(torch.from_numpy(x).float()).numpy().reshape(-1)
            out[n] = {"fold": j, "prior_r": _r(p, z), "anm_r": _r(anm, z), "residues": int(np.isfinite(z).sum())}
    return out


def export(lin: torch.nn.Linear, out: Path, meta: dict) -> None:
    """ONNX with the metadata under ``structure_prior.METADATA_KEY`` (the bundle checks the feature list)."""
    import onnx
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(4, len(sp.FEATURES))
    torch.onnx.export(lin.eval(), (dummy,), str(out), input_names=["features"], output_names=["prior"],
                      dynamic_axes={"features": {0: "residues"}, "prior": {0: "residues"}}, opset_version=17,
                      dynamo=False)
    m = onnx.load(str(out))
    del m.metadata_props[:]
    e = m.metadata_props.add()
    e.key, e.value = sp.METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(m)
    onnx.save(m, str(out))


def run(a) -> dict:
    t0 = time.time()
    root = Path(a.atlas_train)
    names = chains(root)[: a.limit or None]
    data = {n: chain_data(n, root) for n in names}
    cv = cross_validate(data, a.folds, a.seed)
    mean = {key: float(np.nanmean([c[key] for c in cv.values()])) for key in ("prior_r", "anm_r")}
    lin = fit([d[0] for d in data.values()], [d[1] for d in data.values()])
    cmd = f"defmap-train prior --folds {a.folds} --seed {a.seed} --out {repo_relative(a.out)}"
    meta = {"description": "structure prior fitted on ATLAS MD (CHARMM36m, 300 K, 3 x 100 ns) of "
                           f"{len(names)} atlas_train chains", "features": list(sp.FEATURES), "alpha": ALPHA,
            "fitted_on": f"atlas_train, {len(names)} chains", "target": "within-chain z-score of log10 MD C-alpha RMSF",
            "cv": {"folds": a.folds, "chains": len(cv), **mean}, "command": cmd,
            "weights": dict(zip(sp.FEATURES, lin.weight.detach().numpy().reshape(-1).round(4).tolist()))}
    out = Path(a.out)
    export(lin, out, meta)
    report = {**meta, "chains": cv, "seconds": round(time.time() - t0, 1)}
    if a.report:
        write_json(Path(a.report).with_suffix(".json"), report)
    print(f"{len(cv)} chains, {a.folds}-fold protein-disjoint CV on atlas_train: prior r {mean['prior_r']:.3f}, "
          f"ANM r {mean['anm_r']:.3f} (mean per chain) -> {out}")
    return report
