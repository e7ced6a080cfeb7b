"""GPU check (run by tools/gpu_check.sh on a machine with an NVIDIA GPU): `defmap` on 6EZ8 with a simulated 5 Å map,
once with `device cpu` and once with `device gpu`; the GPU run must use CUDAExecutionProvider and give the CPU's
values within 1e-4.  Prints the provider, the largest difference and patches per second of each run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


def main() -> int:
    import headless
    import numpy as np
    from chimerax.core.commands import run
    from chimerax.core.errors import UserError

    pdb = ROOT.parent / "shared" / "data" / "structures" / "6ez8.pdb"
    if not pdb.is_file():
        print(f"gpu_check: {pdb} not found", file=sys.stderr)
        return 2
    session = headless.boot()
    run(session, f"open {pdb}")
    run(session, "molmap #1 5 gridSpacing 1.5")
    results = {}
    for device in ("cpu", "gpu", "gpu"):  # the second GPU run is timed warm (CUDA start-up excluded)
        t0 = time.perf_counter()
        try:
            r = run(session, f"defmap #2 structure #1 mapResolution 5 device {device} color false")
        except UserError as e:
            print(f"gpu_check: FAIL: device {device}: {e}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - t0
        results[device] = (r, seconds)
        print(f"gpu_check: device {device}: {r.provider}, {r.patches:,} patches in {seconds:.2f} s "
              f"({r.patches / max(r.stages.get('inference', seconds), 1e-9):,.0f} patches/s in inference)")
    cpu, gpu = results["cpu"][0], results["gpu"][0]
    if gpu.provider != "CUDAExecutionProvider":
        print(f"gpu_check: FAIL: device gpu ran on {gpu.provider}", file=sys.stderr)
        return 1
    diff = float(np.abs(np.asarray(cpu.atom_values) - np.asarray(gpu.atom_values)).max())
    print(f"gpu_check: largest |GPU - CPU| per atom = {diff:.2e}")
    if diff > 1e-4:
        print("gpu_check: FAIL: GPU values differ from CPU values by more than 1e-4", file=sys.stderr)
        return 1
    print("gpu_check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
