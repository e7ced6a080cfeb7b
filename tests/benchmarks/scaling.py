"""Scaling table and plot (docs/scaling.png) from a `bench.py --save` JSON file:

    .venv/bin/python tests/benchmarks/bench.py --cases emd3488,voxel100,6ez8,voxel200,complex8,voxel400 \\
        --save docs/bench_scaling.json
    .venv/bin/python tests/benchmarks/scaling.py docs/bench_scaling.json --png docs/scaling.png

Prints the scaling table of docs/performance.md (markdown) and draws seconds and peak RSS against atoms (structure
mode, with `normalModes true` and `uncertainty true`), C-alpha atoms and map voxels (voxel mode).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(results: list[dict]) -> str:
    rows = ["| case | atoms (C-alpha) | map voxels | patches | end to end | peak RSS "
            "| `normalModes true` (its ANM stage) | peak RSS | `uncertainty true` | peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        v = r.get("variants", {})
        nm, un = v.get("normalModes"), v.get("uncertainty")
        atoms = f"{r['atoms']:,} ({r['ca_atoms']:,})" if "atoms" in r else "voxel mode"
        rows.append(f"| `{r['case']}` | {atoms} | {r['map_voxels']:,} | {r['patches']:,} | {r['seconds']:.2f} s | "
                    f"{r['peak_rss_mb']:,.0f} MB | "
                    + (f"{nm['seconds']:.2f} s ({nm['stages']['normal_modes']:.2f} s) | {nm['peak_rss_mb']:,.0f} MB | "
                       if nm else "– | – | ")
                    + (f"{un['seconds']:.2f} s | {un['peak_rss_mb']:,.0f} MB |" if un else "– | – |"))
    return "\n".join(rows)


def plot(results: list[dict], png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    st = sorted((r for r in results if "atoms" in r), key=lambda r: r["atoms"])
    vx = sorted((r for r in results if "atoms" not in r), key=lambda r: r["map_voxels"])
    fig, ax = plt.subplots(2, 3, figsize=(13, 7.5))
    for row, key, unit in ((0, "seconds", "seconds"), (1, "peak_rss_mb", "peak RSS (MB)")):
        a = ax[row, 0]
        x = [r["atoms"] for r in st]
        a.plot(x, [r[key] for r in st], "o-", label="defmap")
        for name, style in (("normalModes", "s-"), ("uncertainty", "^-")):
            pts = [(r["atoms"], r["variants"][name][key]) for r in st if name in r.get("variants", {})]
            if pts:
                a.plot(*zip(*pts), style, label=f"{name} true")
        for r in st:
            a.annotate(r["case"], (r["atoms"], r[key]), textcoords="offset points", xytext=(4, -10), fontsize=8)
        a.set_xlabel("atoms (structure mode)")
        a = ax[row, 1]
        pts = [(r["ca_atoms"], r["variants"]["normalModes"]["stages"]["normal_modes"] if key == "seconds"
                else r["variants"]["normalModes"]["peak_rss_mb"]) for r in st if "normalModes" in r.get("variants", {})]
        if pts:
            a.plot(*zip(*pts), "s-", color="C1")
        a.set_xlabel("C-alpha atoms (normal modes)")
        a.set_title("ANM stage" if key == "seconds" else "whole `normalModes true` run", fontsize=9)
        a = ax[row, 2]
        a.plot([r["map_voxels"] for r in vx], [r[key] for r in vx], "o-", color="C2")
        for r in vx:
            a.annotate(f"{r['case']} ({r['patches']:,} patches)", (r["map_voxels"], r[key]),
                       textcoords="offset points", xytext=(4, -10), fontsize=8)
        a.set_xlabel("map voxels (voxel mode)")
        for a in ax[row]:
            a.set_xscale("log")
            a.set_yscale("log")
            a.set_ylabel(unit)
            a.grid(True, which="both", alpha=0.3)
    ax[0, 0].legend(fontsize=8)
    load = max(max(r.get("load_average", [0])) for r in results)
    fig.suptitle(f"DEFMap on 2 shared CPU cores (load average up to {load:.1f}): tests/benchmarks/scaling.py",
                 fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", default="docs/bench_scaling.json")
    ap.add_argument("--png", default="docs/scaling.png")
    a = ap.parse_args(argv)
    results = json.loads(Path(a.json).read_text())
    print(table(results))
    plot(results, Path(a.png))
    print(f"wrote {a.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
