"""``make demo``: DEFMap on EMD-3488 + 5ME2 (haemoglobin, 3.2 Å) in a headless ChimeraX session.

Writes into ``demo_output/``: ``defmap_5me2.png`` (model colored by predicted dynamics, with key),
``defmap_5me2.defattr`` (residue attribute) and ``defmap_5me2.csv`` (per-residue values).  Without ../shared/data it
simulates a 4 Å map from a structure it can find, so the demo always runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def find_shared() -> Path | None:
    """../shared/data beside the checkout (or $DEFMAP_SHARED_DATA)."""
    env = os.environ.get("DEFMAP_SHARED_DATA")
    cands = [Path(env)] if env else []
    here = Path.cwd()
    cands += [here.parent / "shared" / "data", here / "shared" / "data"]
    return next((c for c in cands if (c / "emdb").is_dir()), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo_output")
    ap.add_argument("--model", default=None, help="ONNX model (default: the installed model chosen by resolution)")
    args = ap.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="replace")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import headless
    from chimerax.core.commands import run
    from chimerax.core.errors import UserError

    from chimerax.defmap.export import write_residue_csv
    session = headless.boot()
    shared = find_shared()
    if shared is not None:
        run(session, f"open {shared / 'emdb' / 'emd_3488.mrc'}")
        run(session, f"open {shared / 'emdb' / '5me2.pdb'}")
        resolution = 3.2
    else:
        print("../shared/data not found: simulating a 4 Å map with molmap from a bundled test structure")
        structures = sorted(Path(__file__).resolve().parent.glob("*.pdb"))
        if not structures:
            print("Error: no structure available for the demo", file=sys.stderr)
            return 1
        run(session, f"open {structures[0]}")
        run(session, "molmap #1 4 gridSpacing 1.0")
        run(session, "rename #2 simulated_map")
        run(session, "close #1")  # reopen so the structure is #2, as in the real demo
        run(session, f"open {structures[0]}")
        resolution = 4.0
    model = f" model {args.model}" if args.model else ""
    try:
        result = run(session, f"defmap #1 structure #2 mapResolution {resolution}{model}")
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    run(session, "hide #1 models")
    run(session, "cartoon #2")
    run(session, "hide #2 atoms")
    run(session, "show #2 & ligand atoms")
    run(session, "view #2 pad 0.1")
    run(session, "lighting soft")
    run(session, "graphics silhouettes true")
    run(session, "set bgColor white")
    run(session, "key pos 0.52,0.06 size 0.32,0.04 fontSize 18")
    title = "DEFMap: predicted log10 RMSF (Å), EMD-3488 / 5ME2"
    run(session, f'2dlabels text "{title}" xpos 0.03 ypos 0.94 size 20 color black')
    png = out / "defmap_5me2.png"
    run(session, f"save {png} width 900 height 700 supersample 3")
    run(session, f"save {out / 'defmap_5me2.defattr'} attrName r:defmap models #2")
    write_residue_csv(out / "defmap_5me2.csv", result)
    print(f"demo: {len(result.residues)} residues scored with {result.model.name} on {result.provider} "
          f"in {result.seconds:.2f} s; wrote {png}, {out / 'defmap_5me2.defattr'}, {out / 'defmap_5me2.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
