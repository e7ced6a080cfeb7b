"""Batch DEFMap over many map/model pairs, split into shards that a scheduler runs in parallel and that resume.

Each pair runs ``defmap MAP structure MODEL [options]``; its JSON result (model, provider, timings, per-residue
values) and the input files become one record, written atomically as ``OUTDIR/<key>.json`` (one JSON line; ``key`` is
a stable hash of the two files and the options).  A pair whose record exists is skipped, so a shard killed at any
moment is simply started again; a killed write leaves only a ``.tmp`` file, which never counts as done.  A pair that
fails (unreadable map, no atoms in the map, any exception) gets an error record with the one-sentence reason and the
shard goes on.  ``--merge OUTDIR`` joins the records of all shards into one JSON list and one CSV (one row per residue
with its pair's files).

Pairs come from ``--list FILE`` (one ``MAP MODEL`` per line; blank lines and ``#`` comments skipped; quote paths with
spaces) and/or the command line.  Shard ``I/N`` (0-based) takes pairs ``I, I+N, I+2N, ...`` of that list; without
``--shard`` the array index of Slurm, SGE, PBS/Torque or LSF is used (or ``DEFMAP_SHARD_INDEX``/``DEFMAP_SHARD_COUNT``).

In ChimeraX (the script sees ChimeraX's ``session``)::

    chimerax --nogui --exit --script "examples/batch_defmap.py --list pairs.txt --outdir records --shard 0/2"
    chimerax --nogui --exit --script "examples/batch_defmap.py --merge records --out results.json"

In this repository's headless session (same arguments)::

    .venv/bin/python examples/batch_defmap.py --list pairs.txt --outdir records --shard 1/2
    .venv/bin/python examples/batch_defmap.py --out results.json m1.mrc m1.pdb m2.mrc m2.cif   # run all, then merge
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

RECORD_SUFFIX = ".json"


# ---- pairs, keys and shards ---------------------------------------------------------------------------------------

def read_pairs(list_file: str | None, positional: list[str]) -> list[tuple[str, str]]:
    """(map, model) pairs from the list file, then from the command line, in order."""
    pairs = []
    if list_file:
        for n, line in enumerate(Path(list_file).read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            words = shlex.split(line)
            if len(words) != 2:
                raise SystemExit(f"{list_file} line {n}: expected 'MAP MODEL', got {line.strip()!r}")
            pairs.append((words[0], words[1]))
    if len(positional) % 2:
        raise SystemExit("give map and model files in pairs")
    pairs += list(zip(positional[::2], positional[1::2]))
    return pairs


def pair_key(map_file: str, model_file: str, options: str) -> str:
    """Stable across processes, machines' working folders and runs: the absolute paths and the options."""
    text = "\0".join([os.path.abspath(map_file), os.path.abspath(model_file), " ".join(options.split())])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def shard_from_env(env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(index, count), 0-based, from a scheduler's array-job variables; None outside an array job."""
    env = os.environ if env is None else env

    def num(name: str) -> int | None:
        try:
            return int(env[name])
        except (KeyError, ValueError):  # unset, or SGE's "undefined" outside array jobs
            return None
    fallback_count = num("DEFMAP_SHARD_COUNT")
    if num("DEFMAP_SHARD_INDEX") is not None:
        return num("DEFMAP_SHARD_INDEX"), fallback_count or 1
    if num("SLURM_ARRAY_TASK_ID") is not None:  # --array=0-3 or 1-4: index from the minimum
        count = num("SLURM_ARRAY_TASK_COUNT") or fallback_count
        return num("SLURM_ARRAY_TASK_ID") - (num("SLURM_ARRAY_TASK_MIN") or 0), count
    if num("SGE_TASK_ID") is not None:  # -t 1-N (1-based, optional step)
        first, step = num("SGE_TASK_FIRST") or 1, num("SGE_TASK_STEPSIZE") or 1
        last = num("SGE_TASK_LAST")
        count = (last - first) // step + 1 if last is not None else fallback_count
        return (num("SGE_TASK_ID") - first) // step, count
    for name in ("PBS_ARRAYID", "PBS_ARRAY_INDEX"):  # Torque -t 0-(N-1) / PBS Pro -J: count from DEFMAP_SHARD_COUNT
        if num(name) is not None:
            return num(name), fallback_count
    if num("LSB_JOBINDEX"):  # LSF "job[1-N]"; 0 outside array jobs
        return num("LSB_JOBINDEX") - 1, num("LSB_JOBINDEX_END") or fallback_count
    return None


def parse_shard(text: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    if text:
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise SystemExit(f"--shard wants I/N such as 0/4, not {text!r}") from None
    else:
        found = shard_from_env(env)
        if found is None:
            return 0, 1
        i, n = found
        if n is None:
            raise SystemExit(f"array index {i} found but not the number of shards; set DEFMAP_SHARD_COUNT")
    if not (n >= 1 and 0 <= i < n):
        raise SystemExit(f"shard {i}/{n} is out of range: need 0 <= I < N")
    return i, n


# ---- records ------------------------------------------------------------------------------------------------------

def write_record(outdir: Path, key: str, record: dict) -> Path:
    """Temp file in the same folder, fsync, os.replace: the record file is either absent or complete."""
    final = outdir / f"{key}{RECORD_SUFFIX}"
    tmp = outdir / f".{key}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    try:  # make the rename itself durable (POSIX); harmless where folders cannot be opened
        fd = os.open(outdir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return final


def read_record(path: Path) -> dict | None:
    """The record in a file, or None when it is not a complete record (then the pair is not done)."""
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        rec = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("status") in ("ok", "error") and "key" in rec else None


def one_sentence(e: BaseException) -> str:
    """The reason a pair failed, as one sentence (UserErrors already are; others get their type)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    from chimerax.core.errors import UserError
    if not isinstance(e, UserError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    cut = text.find(". ")
    return (text[:cut + 1] if cut > 0 else text)[:300]


# ---- running one shard --------------------------------------------------------------------------------------------

def run_pair(session, map_file: str, model_file: str, options: str) -> dict:
    """defmap on one pair in a clean session; the JSON result as a dict."""
    from chimerax.atomic import AtomicStructure
    from chimerax.core.commands import quote_path_if_necessary as q
    from chimerax.core.commands import run
    from chimerax.core.errors import UserError
    from chimerax.map import Volume
    run(session, "close", log=False)
    maps = [m for m in run(session, f"open {q(map_file)}") or [] if isinstance(m, Volume)]
    if not maps:
        raise UserError(f"{map_file} opened no map")
    structures = [m for m in run(session, f"open {q(model_file)}") or [] if isinstance(m, AtomicStructure)]
    if not structures:
        raise UserError(f"{model_file} opened no atomic structure")
    r = run(session, f"defmap #{maps[0].id_string} structure #{structures[0].id_string} {options}",
            return_json=True)
    return json.loads(r.json_value)


def run_shard(session, pairs: list[tuple[str, str]], outdir: Path, options: str, shard: tuple[int, int],
              retry_errors: bool = False) -> dict[str, int]:
    """Run this shard's pairs that have no record yet; returns counts of ok, error and skipped pairs."""
    outdir.mkdir(parents=True, exist_ok=True)
    index, count = shard
    mine = [(i, m, s) for i, (m, s) in enumerate(pairs) if i % count == index]
    counts = {"ok": 0, "error": 0, "skipped": 0}
    log = session.logger
    for n, (i, map_file, model_file) in enumerate(mine, 1):
        key = pair_key(map_file, model_file, options)
        done = read_record(outdir / f"{key}{RECORD_SUFFIX}")
        if done is not None and not (retry_errors and done["status"] == "error"):
            counts["skipped"] += 1
            continue
        for stale in outdir.glob(f".{key}.*.tmp"):  # what a killed earlier attempt left behind
            stale.unlink(missing_ok=True)
        record = {"key": key, "index": i, "map_file": map_file, "structure_file": model_file, "options": options,
                  "shard": f"{index}/{count}", "host": socket.gethostname(), "pid": os.getpid()}
        t0 = time.time()
        try:
            record.update(run_pair(session, map_file, model_file, options))
            record["status"] = "ok"
            msg = f"{len(record.get('residues', []))} residues with {record.get('model')}"
        except Exception as e:  # UserError or anything else: record why and go on with the next pair
            record.update(status="error", error=one_sentence(e))
            msg = f"error: {record['error']}"
        record["wall_seconds"] = round(time.time() - t0, 3)
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_record(outdir, key, record)
        counts[record["status"]] += 1
        log.info(f"batch shard {index}/{count} [{n}/{len(mine)}] {map_file}: {msg}")
    log.info(f"batch shard {index}/{count}: {counts['ok']} done, {counts['error']} failed, "
             f"{counts['skipped']} already recorded, in {outdir}")
    return counts


# ---- merging ------------------------------------------------------------------------------------------------------

CSV_FIELDS = ["map_file", "structure_file", "model", "chain", "number", "insertion", "name", "value", "sd", "map",
              "normal_modes"]


def merge(outdir: Path, out_json: Path, out_csv: Path | None) -> list[dict]:
    """All complete records of all shards, each pair once, in list order: one JSON list and one residue CSV."""
    records: dict[str, dict] = {}
    for path in sorted(outdir.glob(f"*{RECORD_SUFFIX}")):
        rec = read_record(path)
        if rec is not None:
            records[rec["key"]] = rec  # one file per key, so one record per pair
    ordered = sorted(records.values(), key=lambda r: (r.get("index", 0), r["key"]))
    tmp = out_json.with_name(f".{out_json.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(ordered, indent=1))
    os.replace(tmp, out_json)
    if out_csv is not None:
        tmp = out_csv.with_name(f".{out_csv.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for rec in ordered:
                for res in rec.get("residues", []) if rec["status"] == "ok" else []:
                    w.writerow({"map_file": rec["map_file"], "structure_file": rec["structure_file"],
                                "model": rec.get("model"), "chain": res.get("chain"), "number": res.get("number"),
                                "insertion": res.get("insertion"), "name": res.get("name"),
                                "value": res.get("value"), "sd": res.get("sd"), "map": res.get("map"),
                                "normal_modes": res.get("normal_modes")})
        os.replace(tmp, out_csv)
    return ordered


# ---- command line -------------------------------------------------------------------------------------------------

def batch(session, argv: list[str]):
    ap = argparse.ArgumentParser(prog="batch_defmap.py", description="DEFMap over map/model pairs, in shards")
    ap.add_argument("--list", help="file with one 'MAP MODEL' pair per line")
    ap.add_argument("--outdir", help="folder for the per-pair records (default: OUT.records with --out)")
    ap.add_argument("--shard", help="I/N: run pairs I, I+N, ... (0-based); default from the scheduler's array index")
    ap.add_argument("--options", default="", help="extra defmap options, e.g. 'mapResolution 3.2 color false'")
    ap.add_argument("--retry-errors", action="store_true", help="run pairs again whose record is an error")
    ap.add_argument("--merge", metavar="OUTDIR", help="join the records in OUTDIR (no pairs are run)")
    ap.add_argument("--out", help="merged JSON list (with pairs: run them all, then merge)")
    ap.add_argument("--csv", help="merged CSV, one row per residue (default: --out with suffix .csv)")
    ap.add_argument("pairs", nargs="*", metavar="MAP MODEL", help="map file followed by its fitted model file")
    args = ap.parse_args(argv)
    if args.merge:
        if args.pairs or args.list:
            ap.error("--merge joins records; give pairs in a separate run")
        out = Path(args.out or Path(args.merge) / "merged.json")
        merged = merge(Path(args.merge), out, Path(args.csv) if args.csv else out.with_suffix(".csv"))
        errors = sum(r["status"] == "error" for r in merged)
        session.logger.info(f"batch: merged {len(merged)} pairs ({errors} errors) into {out}")
        return merged
    pairs = read_pairs(args.list, args.pairs)
    if not pairs:
        ap.error("no pairs: give --list FILE or MAP MODEL ...")
    if not (args.outdir or args.out):
        ap.error("give --outdir (records per pair) or --out (one JSON list)")
    outdir = Path(args.outdir or f"{args.out}.records")
    counts = run_shard(session, pairs, outdir, args.options, parse_shard(args.shard), args.retry_errors)
    if args.out:
        merge(outdir, Path(args.out), Path(args.csv) if args.csv else Path(args.out).with_suffix(".csv"))
        session.logger.info(f"batch: wrote the results of {len(pairs)} pairs to {args.out}")
    return counts


if "session" in globals():  # run by ChimeraX: --script "batch_defmap.py ARGS" sets sys.argv
    batch(session, sys.argv[1:])  # noqa: F821
elif __name__ == "__main__":
    from chimerax.core.errors import UserError
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # this repository's harness
    import headless
    s = headless.boot()
    try:
        batch(s, sys.argv[1:])
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
