"""Batch DEFMap: predict dynamics for several map/model pairs and write all results as one JSON list.

Each pair runs ``defmap MAP structure MODEL ... returnJson true``; the JSON it returns (model, provider, timings,
per-residue values) is collected with the input file names, so a pipeline can read every result from one file.

In ChimeraX (the script sees ChimeraX's ``session``)::

    chimerax --nogui --exit --script "examples/batch_defmap.py --out results.json m1.mrc m1.pdb m2.mrc m2.cif"

Without ChimeraX installed, in this repository's headless session (same commands)::

    .venv/bin/python examples/batch_defmap.py --out results.json m1.mrc m1.pdb m2.mrc m2.cif
"""

from __future__ import annotations

import argparse
import json
import sys


def batch(session, argv: list[str]) -> list[dict]:
    ap = argparse.ArgumentParser(prog="batch_defmap.py", description="DEFMap over several map/model pairs")
    ap.add_argument("--out", required=True, help="JSON file to write (a list, one record per map)")
    ap.add_argument("--options", default="", help="extra defmap options, e.g. 'mapResolution 3.2 saveCsv x.csv'")
    ap.add_argument("pairs", nargs="+", metavar="MAP MODEL", help="map file followed by its fitted model file")
    args = ap.parse_args(argv)
    if len(args.pairs) % 2:
        ap.error("give map and model files in pairs")
    from chimerax.core.commands import quote_path_if_necessary as q
    from chimerax.core.commands import run
    results = []
    for map_file, model_file in zip(args.pairs[::2], args.pairs[1::2]):
        run(session, "close")
        run(session, f"open {q(map_file)}")  # becomes #1
        run(session, f"open {q(model_file)}")  # becomes #2
        r = run(session, f"defmap #1 structure #2 {args.options} returnJson true", return_json=True)
        record = json.loads(r.json_value)
        record.update(map_file=map_file, structure_file=model_file)
        results.append(record)
        session.logger.info(f"batch: {map_file}: {len(record['residues'])} residues with {record['model']}")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    session.logger.info(f"batch: wrote {len(results)} results to {args.out}")
    return results


if "session" in globals():  # run by ChimeraX: --script "batch_defmap.py ARGS" sets sys.argv
    batch(session, sys.argv[1:])  # noqa: F821
elif __name__ == "__main__":
    from pathlib import Path

    from chimerax.core.errors import UserError
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # this repository's harness
    import headless
    s = headless.boot()
    try:
        batch(s, sys.argv[1:])
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
