"""Is the label engine's flexibility like real MD?  ``defmap-train engine-check``.

Per protein: the spread of its per-residue log10 C-alpha RMSF (SD over residues) and the Pearson r between its log
C-alpha RMSF and log ANM fluctuations of the same structure.  Quantiles over the engine's records (training/data/
ensembles) next to the same over md_reference's real MD.  The engine is realistic when MD's values fall inside the
engine's range; the ANM r is how much of the labels the structure alone predicts (the network must beat it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chimerax.defmap.nma import anm_log_fluctuations

from ..paths import write_json

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def record_stats(path: Path) -> dict:
    from ..ensembles import load_record, record_structure
    rec = load_record(path)
    st = record_structure(rec)
    ca = st.ca_index()
    lr = np.log10(np.asarray(rec["rmsf"], dtype=np.float64)[ca])
    anm = anm_log_fluctuations(st.xyz[ca])
    ok = np.isfinite(anm) & np.isfinite(lr)
    return {"name": str(rec["name"]), "spread": float(lr.std()), "anm_r": float(np.corrcoef(lr[ok], anm[ok])[0, 1])}


def md_stats(md_dir: Path) -> list[dict]:
    from ..md_reference import load_chain, md_chains
    out = []
    for c in md_chains(md_dir):
        st, md = load_chain(md_dir, c)
        lr = np.log10(md)
        anm = anm_log_fluctuations(st.xyz[st.ca_index()])
        ok = np.isfinite(anm)
        out.append({"name": c, "spread": float(lr.std()), "anm_r": float(np.corrcoef(lr[ok], anm[ok])[0, 1])})
    return out


def quantiles(rows: list[dict], key: str) -> list[float]:
    return [round(float(q), 3) for q in np.quantile([r[key] for r in rows], QUANTILES)]


def run(a) -> dict:
    eng = [record_stats(p) for p in sorted(Path(a.ensembles).glob("*.npz"))]
    md = md_stats(Path(a.md_reference))
    res = {"command": f"defmap-train engine-check --ensembles {a.ensembles}", "quantiles": list(QUANTILES),
           "engine": {"proteins": len(eng), "spread": quantiles(eng, "spread"), "anm_r": quantiles(eng, "anm_r"),
                      "anm_r_mean": float(np.mean([r["anm_r"] for r in eng]))},
           "md_reference": {"chains": len(md), "spread": quantiles(md, "spread"), "anm_r": quantiles(md, "anm_r"),
                            "anm_r_mean": float(np.mean([r["anm_r"] for r in md]))},
           "per_protein": {"engine": eng, "md_reference": md}}
    for k in ("spread", "anm_r"):
        e, m = res["engine"][k], res["md_reference"][k]
        inside = np.mean([(e[0] <= r[k] <= e[-1]) for r in md])
        print(f"{k}: engine q05..q95 {e}  md_reference {m}  (MD chains inside the engine's 5-95 % range: {inside:.0%})")
    print(f"mean ANM r: engine {res['engine']['anm_r_mean']:.3f}, md_reference {res['md_reference']['anm_r_mean']:.3f}")
    if a.out:
        write_json(a.out, res)
    return res

