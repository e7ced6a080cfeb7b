"""examples/batch_defmap.py split into shards that run in separate processes, survive SIGKILL, resume and merge into
one result per pair."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .helpers import read_heavy_atoms, shared_path, simulate_map, smooth_rmsf_field

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "batch_defmap.py"


def load_batch_module():
    spec = importlib.util.spec_from_file_location("batch_defmap", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines functions only: neither ChimeraX's session nor __main__ is present
    return mod


def write_map(values, origin, path: Path) -> str:
    from chimerax.map_data import ArrayGridData
    from chimerax.map_data.mrc.writemrc import write_mrc2000_grid_data
    write_mrc2000_grid_data(ArrayGridData(values, origin=tuple(origin), step=(1.0, 1.0, 1.0)), str(path))
    return str(path)


def test_shard_index_comes_from_each_scheduler():
    b = load_batch_module()
    assert b.parse_shard("1/4", {}) == (1, 4)
    assert b.parse_shard(None, {}) == (0, 1)
    assert b.parse_shard(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    assert b.parse_shard(None, {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4",
                                "SLURM_ARRAY_TASK_MIN": "1"}) == (3, 4)
    assert b.parse_shard(None, {"SGE_TASK_ID": "1", "SGE_TASK_LAST": "3"}) == (0, 3)  # SGE is 1-based
    assert b.parse_shard(None, {"SGE_TASK_ID": "undefined"}) == (0, 1)  # not an array job
    assert b.parse_shard(None, {"PBS_ARRAYID": "2", "DEFMAP_SHARD_COUNT": "3"}) == (2, 3)
    assert b.parse_shard(None, {"LSB_JOBINDEX": "2", "LSB_JOBINDEX_END": "2"}) == (1, 2)
    assert b.parse_shard(None, {"LSB_JOBINDEX": "0"}) == (0, 1)
    assert b.parse_shard(None, {"DEFMAP_SHARD_INDEX": "1", "DEFMAP_SHARD_COUNT": "2"}) == (1, 2)
    for bad in ("2/2", "x", "1/0"):
        with pytest.raises(SystemExit):
            b.parse_shard(bad, {})
    with pytest.raises(SystemExit):  # an index without a count cannot split the list
        b.parse_shard(None, {"PBS_ARRAYID": "1"})
    assert b.pair_key("a.mrc", "b.pdb", "x  y") == b.pair_key(os.path.abspath("a.mrc"), "b.pdb", "x y")


def test_two_shards_one_killed_and_restarted_merge_to_each_pair_once(random_model, tmp_path, request):
    """5 pairs (one map is a text file), shard 0 by --shard and shard 1 by Slurm's variables, in two processes;
    shard 0 is SIGKILLed after its first record, while it waits to read its second map, and started again; the merge
    holds 4 results and 1 error."""
    specs = [("1orc.pdb", 1), ("1a28.pdb", 2), ("1a8o.pdb", 3), ("1ckb.pdb", 4)]
    good = []
    for name, seed in specs:
        pdb = shared_path("structures", name)
        xyz = read_heavy_atoms(pdb)
        m, origin = simulate_map(xyz, smooth_rmsf_field(xyz, seed=seed), resolution=4.0, pad=8.0)
        good.append((write_map(m, origin, tmp_path / f"{pdb.stem}.mrc"), str(pdb)))
    bad = tmp_path / "not a map.mrc"
    bad.write_text("this is a text file, not an MRC map\n")
    # list order: shard 0 (even indices) runs 1orc, then 1a28, then the bad map; shard 1 runs 1a8o and 1ckb.
    # Until shard 0 is killed, 1a28's map is a named pipe that nobody writes: opening it blocks, so shard 0 is
    # certainly still on that pair when the kill comes, however the processes are scheduled (a readable map let the
    # pair, about 0.7 s of work, race this process's noticing the first record)
    stalled = Path(good[1][0])
    held = stalled.with_name(f"held {stalled.name}")
    os.replace(stalled, held)
    os.mkfifo(stalled)
    pairs = [good[0], good[2], good[1], good[3], (str(bad), str(shared_path("structures", "1orc.pdb")))]
    listing = tmp_path / "pairs.txt"
    listing.write_text("# map model\n" + "".join(f'"{m}" "{s}"\n' for m, s in pairs))
    outdir = tmp_path / "records"
    py = str(ROOT / ".venv" / "bin" / "python")
    base = [py, str(SCRIPT), "--list", str(listing), "--outdir", str(outdir),
            "--options", f"model {random_model} mapResolution 4 color false"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SGE_", "PBS_", "LSB_", "DEFMAP_SHARD"))}
    slurm = dict(env, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2")
    b = load_batch_module()
    keys = [b.pair_key(m, s, f"model {random_model} mapResolution 4 color false") for m, s in pairs]

    procs = []

    def run_proc(args, env):
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      encoding="utf-8", errors="replace"))
        return procs[-1]

    def stop_leftovers():  # a failed assertion must not leave a shard waiting on the pipe for ever
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    request.addfinalizer(stop_leftovers)
    shard0 = run_proc(base + ["--shard", "0/2"], env)
    shard1 = run_proc(base, slurm)
    first = outdir / f"{keys[0]}.json"
    deadline = time.monotonic() + 240
    while not first.exists():
        assert shard0.poll() is None, shard0.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "shard 0 wrote no record"
        time.sleep(0.01)
    assert shard0.poll() is None, "shard 0 finished before it could be killed"
    shard0.send_signal(signal.SIGKILL)
    shard0.wait()
    assert shard0.returncode == -signal.SIGKILL
    killed_record = first.read_text()
    assert json.loads(killed_record)["pid"] == shard0.pid
    assert not (outdir / f"{keys[2]}.json").exists()  # killed while on the 1a28 pair
    os.replace(held, stalled)  # the map is readable now, under the same name (so the same key)
    # what a kill in the middle of writing leaves: a half-written temp file, which must not count as done
    (outdir / f".{keys[2]}.99999.tmp").write_text('{"key": "' + keys[2] + '", "status": "ok", "resid')
    restarted = run_proc(base + ["--shard", "0/2"], env)
    out0 = restarted.communicate(timeout=300)[0]
    out1 = shard1.communicate(timeout=300)[0]
    assert restarted.returncode == 0, out0[-3000:]
    assert shard1.returncode == 0, out1[-3000:]
    assert first.read_text() == killed_record  # resumed: the finished pair was skipped, not run again
    assert "1 already recorded" in out0 and "shard 1/2" in out1
    assert not list(outdir.glob("*.tmp"))
    merged_json, merged_csv = tmp_path / "all.json", tmp_path / "all.csv"
    proc = subprocess.run(base[:2] + ["--merge", str(outdir), "--out", str(merged_json), "--csv", str(merged_csv)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    merged = json.loads(merged_json.read_text())
    assert [r["key"] for r in merged] == keys  # each pair exactly once, in list order
    assert [(r["map_file"], r["structure_file"]) for r in merged] == pairs
    assert [r["status"] for r in merged] == ["ok"] * 4 + ["error"]
    err = merged[4]["error"]
    assert "not a map.mrc" in err and "\n" not in err and err.count(". ") == 0, err
    assert {r["shard"] for r in merged} == {"0/2", "1/2"}
    for r in merged[:4]:
        vals = np.array([x["value"] for x in r["residues"]])
        assert len(vals) > 20 and np.isfinite(vals).all()
    rows = list(csv.DictReader(open(merged_csv)))
    assert len(rows) == sum(len(r["residues"]) for r in merged[:4])
    assert {(row["map_file"], row["structure_file"]) for row in rows} == set(pairs[:4])
    assert float(rows[0]["value"]) == pytest.approx(merged[0]["residues"][0]["value"])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
