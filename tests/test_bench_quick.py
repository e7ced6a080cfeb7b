"""`bench.py --quick` (the quick mode of `make bench`) runs inside `make test`, so the benchmark never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .helpers import shared_path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("case", "seconds", "peak_rss_mb", "patches_per_s", "gflops", "flop_efficiency", "reference_ratio")


def test_quick_bench_reports_every_key_with_sane_values():
    shared_path("emdb", "emd_3488.mrc")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "benchmarks" / "bench.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("bench: ") and "model" in lines[0]  # says which model it measured
    results = json.loads(lines[-1])  # the last line: a JSON array, one object per case
    assert [r["case"] for r in results] == ["emd3488", "voxel100"]
    for r in results:
        assert all(k in r for k in KEYS), r
        assert 0 < r["seconds"] < 120
        assert 50 < r["peak_rss_mb"] < 2048
        assert r["patches_per_s"] > 0 and r["patches"] > 1000
        assert r["gflops"] > 0 and r["sgemm_peak_gflops"] > 0
        assert 0 < r["flop_efficiency"] < 2  # vs a peak measured moments before; contention can tilt it
        assert r["reference_ratio"] > 0 and r["reference_seconds"] > 0
        assert set(r["stages"]) == {"sharpness", "preprocess", "patches", "inference", "mapping", "coloring",
                                    "packing", "misfit"}
        assert r["stages"]["sharpness"] > 0  # both modes measure the map's spectrum slope
        assert (r["stages"]["packing"] > 0) == (r["case"] == "voxel100")  # voxel mode's packing stage only
        assert (r["stages"]["misfit"] > 0) == (r["case"] == "emd3488")  # structure mode's map-model comparison
        assert sum(r["stages"].values()) <= r["seconds"] * 1.05 + 0.05
    ref = results[0]["reference"]
    assert ref["n_patches"] >= results[0]["patches"]  # one patch per atom, no de-duplication
    assert ref["max_abs_diff_vs_defmap"] < 1e-4  # same network, same grid, same numbers
