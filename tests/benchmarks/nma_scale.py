"""Normal modes alone at scale: copies of 6EZ8's C-alpha atoms on a 2×2×2 grid, as one network or several.

    .venv/bin/python tests/benchmarks/nma_scale.py --copies 1 2 4 8 --gap 5      # copies touching: connected parts
    .venv/bin/python tests/benchmarks/nma_scale.py --copies 8 --gap -10          # overlapping: one network

Each size runs in a fresh subprocess (so peak RSS is its own): connected parts, the memory estimate nma.anm_msf checks
against available memory, seconds of anm_log_fluctuations and peak RSS (ru_maxrss) of the process.  The copies are
translated by the C-alpha bounding box plus --gap Å (a negative gap interleaves their surfaces).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PDB = ROOT.parent / "shared" / "data" / "structures" / "6ez8.pdb"


def copies(n: int, gap: float) -> np.ndarray:
    ca = np.array([(float(ln[30:38]), float(ln[38:46]), float(ln[46:54])) for ln in open(PDB)
                   if ln.startswith("ATOM") and ln[12:16] == " CA " and ln[16] in " A"])
    step = np.ptp(ca, axis=0) + gap
    return np.vstack([ca + step * np.array([k & 1, (k >> 1) & 1, (k >> 2) & 1]) for k in range(n)])


def one(n: int, gap: float) -> dict:
    from chimerax.defmap import nma
    ca = copies(n, gap)
    parts = np.bincount(nma._components(ca, nma.CUTOFF))
    est = nma.memory_estimate(ca)
    t0 = time.perf_counter()
    f = nma.anm_log_fluctuations(ca)
    sec = time.perf_counter() - t0
    return {"copies": n, "gap": gap, "c_alpha": len(ca), "parts": sorted(parts.tolist(), reverse=True)[:4],
            "n_parts": len(parts), "estimate_mb": round(est / 2 ** 20), "seconds": round(sec, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "finite": int(np.isfinite(f).sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--gap", type=float, default=5.0)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.copies[0], a.gap)))
        return 0
    for n in a.copies:
        p = subprocess.run([sys.executable, __file__, "--one", "--copies", str(n), "--gap", str(a.gap)],
                           capture_output=True, text=True)
        if p.returncode:
            print(p.stdout[-2000:] + p.stderr[-2000:])
            return 1
        print(p.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
