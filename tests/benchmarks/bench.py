"""`make bench`: DEFMap speed, memory and FLOP efficiency in a real headless ChimeraX session.

    .venv/bin/python tests/benchmarks/bench.py             # full: 6ez8, emd3488, voxel200 (median of 3 repeats),
                                                           # complex8, voxel400 (at scale, 1 repeat)
    .venv/bin/python tests/benchmarks/bench.py --quick     # small cases, 1 repeat (< 60 s; run by make test)

Every case runs in a fresh subprocess (so its peak RSS is its own): boot ChimeraX headless, open the data, run the
``defmap`` command once to warm up (onnxruntime sessions are created then) and ``--repeats`` more times, with the
reference-style pipeline run once after the first measured repeat (so load changes on a shared machine hit both).
Per case it reports the median time of each stage (preprocess, patches, inference, mapping, coloring) and of the
whole command (wall clock around ``run(session, "defmap ...")``), patches/s (centre voxels predicted per second of
inference), peak RSS (high-water mark of our runs: ``ru_maxrss`` before the reference, Linux VmHWM reset after it),
the network's achieved GFLOP/s (FLOPs it executed / inference seconds) and that as a fraction of an sgemm peak
measured in the same subprocess before the case and again after the reference (the higher of the two; each the best
of numpy/OpenBLAS and onnxruntime/MLAS on 2048³ matrices).  ``reference_ratio_cpu`` is the same ratio in process CPU
time, which contention from other processes disturbs less than wall time.

The reference-style pipeline mirrors the original DEFMap scripts (clinfo/DEFMap prep_dataset.py, 3dcnn_main.py,
rmsf_map2model_for_defmap.py) on the same preprocessed grid and the same ONNX model and onnxruntime session:
as prep_dataset.py, a NaN-for-empty label grid and a Python loop over the numpy array of every lattice voxel centre
that cuts one patch per atom at labelled voxels (no de-duplication), Keras-style
``predict`` in batches of 32, and a Python loop over atoms for the residue means.  ``reference_ratio`` = its time /
our end-to-end time (ours also includes setting attributes, coloring and logging, which the reference does not do).
For voxel mode the reference loops over every lattice voxel above the level and predicts per patch; when that would
take more than a minute, it is timed on a random subset of patches and scaled (``reference_extrapolated``).

At scale (``complex8``: eight copies of 6EZ8, 163,928 atoms, 20,968 C-alpha, with a 5 Å molmap; ``voxel400``: that
map resampled to 400³, voxel mode) the reference-style pipeline is not run (``reference_ratio`` null) and one measured
repeat follows the warm-up.  Structure cases also run the command once with ``normalModes true`` and once with
``uncertainty true`` (``variants``: the run with the median time of ``--repeats`` runs (1 at scale; the first run
of an option is not a warm-up: its imports count), its stages, and peak RSS, VmHWM reset before the runs).  At
scale, peak RSS counts from after the data are opened (the booted session and the open data are resident, their
setup is not).

Models: each case runs the model a user gets from ``defmap`` without ``model``: structure cases (6ez8, emd3488,
complex8) the map + model kind ``onnx_models/defmap_mapmodel_5A.onnx`` (two input channels: the map and the fitted
model's own density, computed in the preprocess stage; two outputs: mean log10 RMSF and log-variance, so
``uncertainty true`` is the same single pass), voxel cases the map-only ``onnx_models/defmap_5A.onnx`` (one channel,
two outputs).  The path is passed explicitly (``model PATH``) so ``$DEFMAP_MODEL_PATH`` cannot change what is measured;
each case records it (``model``, ``model_name``, ``model_channels``, ``model_outputs``) and whether it is the one
``defmap`` picks by default (``model_is_default``).  Without onnx_models/ both are stand-ins of the shipped
architecture and channels/outputs with random weights; ``--model PATH`` runs every case with one model instead.

The last line of output is one JSON array holding one object per case, with keys
case, seconds, peak_rss_mb, patches_per_s, gflops, flop_efficiency, reference_ratio (and more detail).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from math import isnan
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))  # the headless harness (not part of the wheel)
SHARED = ROOT.parent / "shared" / "data"
SHIPPED_MODEL = ROOT / "onnx_models" / "defmap_5A.onnx"  # map-only: what voxel mode picks by default
SHIPPED_STRUCTURE_MODEL = ROOT / "onnx_models" / "defmap_mapmodel_5A.onnx"  # map + model: structure mode's default
# the shipped architecture (tools: shared_features.conv_chain on the shipped models), first layer's cin = input channels
SHIPPED_LAYERS = ((16, 3), (32, 3), (64, 3), (64, 3), (128, 2), (64, 1), (2, 1))
KEYS = ("case", "seconds", "peak_rss_mb", "patches_per_s", "gflops", "flop_efficiency", "reference_ratio")
CASES = ("6ez8", "emd3488", "voxel200", "complex8", "voxel400")
SCALE_CASES = ("complex8", "voxel400")  # no reference-style run, one measured repeat
STRUCTURE_CASES = ("6ez8", "emd3488", "complex8")
COMPLEX_GAP = 5.0  # Å between the copies' bounding boxes in complex8 (copies touching: 2 networks of 4 copies)
QUICK_CASES = ("emd3488", "voxel100")
REF_BATCH = 32  # Keras Model.predict's default batch size, as DEFMap's 3dcnn_main.py used it


# ------------------------------------------------------------------------------------------------------------- model
def bench_models(tmpdir: Path) -> tuple[dict[str, Path], str]:
    """{"structure": model, "voxel": model}: the shipped 5 Å map + model and map-only models when they are there
    (what ``defmap`` picks without ``model`` in each mode), else stand-ins of the same architecture, input channels
    and outputs with random weights."""
    if SHIPPED_MODEL.is_file() and SHIPPED_STRUCTURE_MODEL.is_file():
        return ({"structure": SHIPPED_STRUCTURE_MODEL, "voxel": SHIPPED_MODEL},
                f"shipped models: structure mode {_shown(SHIPPED_STRUCTURE_MODEL)} (map + model), "
                f"voxel mode {_shown(SHIPPED_MODEL)} (map only)")
    sys.path.insert(0, str(ROOT))
    from chimerax.defmap.preprocess import FeatureSpec
    from tests.helpers import fcn_onnx_model
    spec = FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)
    out = {}
    for mode, channels, name in (("structure", ["density", "model_density"], "standin-mapmodel-5A"),
                                 ("voxel", ["density"], "standin-5A")):
        cin, layers = len(channels), []
        for cout, k in SHIPPED_LAYERS:
            layers.append((cin, cout, k))
            cin = cout
        out[mode] = fcn_onnx_model(tmpdir / f"{name}.onnx", spec, seed=0, name=name, layers=tuple(layers),
                                   last_bias={1: -3.0},  # log-variance around exp(-3), as test_two_channel_path
                                   metadata={"input_channels": channels,
                                             "outputs": ["log10_rmsf_angstrom", "log_variance"],
                                             "calibration": {"sd_scale": 1.0, "anm_weight": 1.0}})
    return out, ("stand-in models (shipped architecture, channels and outputs, random weights; "
                 f"{_shown(SHIPPED_STRUCTURE_MODEL)} / {_shown(SHIPPED_MODEL)} are not there)")


def _shown(path: Path) -> str:
    """The path relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def case_model(models: dict[str, Path], case: str) -> Path:
    """Structure cases: the map + model kind; voxel cases and --levers (single-channel patches): map-only."""
    return models["structure" if case in STRUCTURE_CASES else "voxel"]


def model_record(model: Path, structure: bool) -> dict:
    """Which model a case ran, and whether ``defmap`` without ``model`` would have picked the same file."""
    from chimerax.defmap import network
    info = network.read_model_info(model)
    try:
        default = network.resolve_model(None, None, structure).path
        is_default = default.resolve().read_bytes() == model.resolve().read_bytes()
    except network.ModelError:
        is_default = False
    return {"model": _shown(model), "model_name": info.name, "model_channels": list(info.channels),
            "model_outputs": list(info.outputs), "model_is_default": bool(is_default)}


# ----------------------------------------------------------------------------------------------------------- sgemm peak
def _repeat_times(f, n: int) -> list[float]:
    """Wall-clock seconds of n calls of f after one warm-up call."""
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return ts


def sgemm_peak_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """Best sustained single-precision GEMM rate on this machine now: numpy (OpenBLAS) and onnxruntime (MLAS)."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    flops = 2.0 * n ** 3

    def best(f):
        return flops / min(_repeat_times(f, repeats)) / 1e9

    out = {"numpy": best(lambda: a @ b)}
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "sgemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
                              initializer=[numpy_helper.from_array(b, "W")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count() or 1
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = best(lambda: s.run(None, {"x": a}))
    except Exception as e:  # pragma: no cover - onnxruntime is a hard dependency
        out["onnxruntime_error"] = str(e)
    out["peak"] = max(v for k, v in out.items() if isinstance(v, float))
    return out


# --------------------------------------------------------------------------------------------------------------- cases
def open_case(session, case: str, quick: bool):
    """Open the case's data; returns (defmap command arguments, description)."""
    from chimerax.core.commands import run

    def o(path):
        if not path.exists():
            raise SystemExit(f"bench: needs {path} (../shared/data)")
        return run(session, f"open {path}", log=False)

    if case == "6ez8":
        o(SHARED / "structures" / "6ez8.pdb")
        run(session, "molmap #1 5 gridSpacing 1.5", log=False)  # a 5 Å molmap-style map on a 1.5 Å grid -> #2
        s = session.models.list(model_id=(1,))[0]
        v = session.models.list(model_id=(2,))[0]
        return "#2 structure #1", f"6EZ8 ({s.num_atoms:,} atoms), molmap 5 Å at 1.5 Å, {_dims(v)}"
    if case == "emd3488":
        o(SHARED / "emdb" / "emd_3488.mrc")
        o(SHARED / "emdb" / "5me2.pdb")
        s = session.models.list(model_id=(2,))[0]
        v = session.models.list(model_id=(1,))[0]
        return "#1 structure #2", f"EMD-3488 ({_dims(v)}, 1.05 Å) + 5ME2 ({s.num_atoms:,} atoms)"
    if case in ("voxel200", "voxel100"):
        o(SHARED / "emdb" / "emd_3488.mrc")
        v = session.models.list(model_id=(1,))[0]
        level = v.minimum_surface_level
        if case == "voxel200":  # EMD-3488 trilinearly resampled to 200³ (0.522 Å) -> #2, as 'volume resample' would
            from chimerax.map import volume_from_grid_data
            from chimerax.map_data import ArrayGridData
            from scipy import ndimage
            m = v.full_matrix().astype(np.float32)
            fine = ndimage.zoom(m, 200 / m.shape[0], order=1)  # corner-aligned: 200 samples span the same box
            step = tuple(s * (n - 1) / (f - 1) for s, n, f in zip(v.data.step, m.shape[::-1], fine.shape[::-1]))
            g = ArrayGridData(fine, origin=v.data.origin, step=step, name="emd_3488 200^3")
            v2 = volume_from_grid_data(g, session, style="surface", show_dialog=False)
            v2.set_parameters(surface_levels=[level])
            v2.update_drawings()  # compute the contour surface now (no GUI redraw loop headless)
            run(session, "close #1", log=False)
            v = v2
        return (f"#{v.id_string} level {level:.6g}",
                f"voxel mode on EMD-3488 {'resampled to ' if case == 'voxel200' else ''}{_dims(v)} "
                f"({v.data.step[0]:.3g} Å), level {level:.3g}")
    if case in ("complex8", "voxel400"):
        s = complex8(session, o(SHARED / "structures" / "6ez8.pdb")[0])
        run(session, f"molmap #{s.id_string} 5 gridSpacing 1.5", log=False)  # -> #2
        v = session.models.list(model_id=(2,))[0]
        if case == "complex8":
            return (f"#2 structure #{s.id_string}",
                    f"complex8: 8 copies of 6EZ8 ({s.num_atoms:,} atoms, {s.num_chains} chains), molmap 5 Å at 1.5 Å, "
                    f"{_dims(v)}")
        v2 = resampled(session, v, 400)  # -> 400³ at ~0.65 Å; the level: the molmap's own initial surface level
        level = v.minimum_surface_level
        run(session, f"close #{s.id_string},2", log=False)
        return (f"#{v2.id_string} level {level:.6g}",
                f"voxel mode on the complex8 molmap resampled to {_dims(v2)} ({v2.data.step[0]:.3g} Å), "
                f"level {level:.3g}")
    raise SystemExit(f"bench: unknown case {case}")


def complex8(session, s):
    """Eight copies of structure s in one model, on a 2×2×2 grid (bounding boxes COMPLEX_GAP apart), chain IDs made
    unique (6EZ8: A, B -> A..P), with ChimeraX's own Structure.copy/combine (the `combine` command's code)."""
    base = s.copy()
    xyz = base.atoms.coords.copy()
    step = np.ptp(xyz, axis=0) + COMPLEX_GAP
    ids = [c.chain_id for c in base.chains]
    free = iter(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" if c not in ids)
    for k in range(1, 8):
        c = base.copy()
        c.atoms.coords = xyz + step * np.array([k & 1, (k >> 1) & 1, (k >> 2) & 1])
        s.combine(c, {cid: next(free) for cid in ids}, s.scene_position)
        c.delete()
    base.delete()
    return s


def resampled(session, v, n: int):
    """Volume v padded with zeros to a cube (at its high ends) and trilinearly resampled to n³, as 'volume resample'
    would."""
    from chimerax.map import volume_from_grid_data
    from chimerax.map_data import ArrayGridData
    from scipy import ndimage
    m = v.full_matrix().astype(np.float32)
    m = np.pad(m, [(0, max(m.shape) - k) for k in m.shape])
    fine = ndimage.zoom(m, n / m.shape[0], order=1)  # corner-aligned: the samples span the same box
    if v.data.step[0] != v.data.step[1] or v.data.step[1] != v.data.step[2]:
        raise SystemExit("bench: resampled() expects a map with cubic voxels")
    step = tuple(s * (k - 1) / (f - 1) for s, k, f in zip(v.data.step, m.shape[::-1], fine.shape[::-1]))
    g = ArrayGridData(fine, origin=v.data.origin, step=step, name=f"{v.name} {n}^3")
    v2 = volume_from_grid_data(g, session, style="surface", show_dialog=False)
    v2.set_parameters(surface_levels=[v.minimum_surface_level])
    v2.update_drawings()
    return v2


def _dims(v) -> str:
    return "×".join(str(int(n)) for n in v.data.size)


def run_case(case: str, model: Path, repeats: int, quick: bool) -> dict:
    """One case in this (fresh) process: warm-up, repeats, with the reference-style run in between them."""
    import headless
    from chimerax.core.commands import run

    from chimerax.defmap import predict as dm_predict
    peaks = [sgemm_peak_gflops()]
    session = headless.boot()
    args, desc = open_case(session, case, quick)
    command = f"defmap {args} model {model}"
    if " structure " in args:  # residue means over heavy atoms, as the reference (DEFMap's scripts) takes them
        command += " residueAtoms heavy"
    _reset_peak_rss()  # count from here: the open data stay resident, their setup (molmap, resampling) does not
    scale = case in SCALE_CASES
    repeats = 1 if scale else repeats
    runs, ref, rss_before_ref, hwm_reset = [], None, None, False
    # the reference runs after the first measured repeat, so a change in the load of this shared machine hits
    # both sides alike; its memory is kept out of the peak (VmHWM is reset after it where Linux allows)
    ref_after = 1 if repeats >= 2 else repeats
    if scale:
        ref_after = -1
    for i in range(repeats + 1):  # run 0 is a warm-up (onnxruntime sessions are created in it)
        t0, c0 = time.perf_counter(), time.process_time()
        res = run(session, command, log=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        pred = next(iter(dm_predict._PREDICTORS.values()))
        runs.append({"wall": wall, "cpu": cpu, "stages": dict(res.stages), "flops": pred.flops,
                     "method": pred.method, "patches": int(getattr(res, "patches", 0) or getattr(res, "voxels", 0))})
        pred.flops = 0.0
        if i == ref_after:
            rss_before_ref = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            c0 = time.process_time()
            ref = reference_pipeline(session, case, res, pred, args)
            ref["cpu_seconds"] = time.process_time() - c0
            peaks.append(sgemm_peak_gflops())
            hwm_reset = _reset_peak_rss()
    if scale:
        peak_rss_mb = _vm_hwm_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        ref = {"skipped": "the reference-style pipeline is not run at scale"}
    else:
        peak_rss_mb = max(rss_before_ref, _vm_hwm_mb() if hwm_reset else 0.0)
    if not scale and not hwm_reset and repeats > ref_after:  # cannot separate the reference's memory from ours
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    variants = {}
    if case in STRUCTURE_CASES and not quick:
        for opt in ("normalModes true", "uncertainty true"):
            hw = _reset_peak_rss()
            vruns = []
            for _ in range(repeats):  # median of the repeats, as for the plain command (1 at scale)
                t0 = time.perf_counter()
                res = run(session, f"{command} {opt}", log=False)
                vruns.append((time.perf_counter() - t0, dict(res.stages)))
            k = int(np.argsort([w for w, _ in vruns])[len(vruns) // 2])
            variants[opt.split()[0]] = {
                "seconds": round(vruns[k][0], 3), "stages": {n: round(v, 3) for n, v in vruns[k][1].items()},
                "runs_seconds": [round(w, 3) for w, _ in vruns],
                "peak_rss_mb": round(_vm_hwm_mb() if hw else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                     / 1024.0, 1)}
    measured = runs[1:]
    wall = float(np.median([r["wall"] for r in measured]))
    cpu = float(np.median([r["cpu"] for r in measured]))
    # packing: voxel mode's; misfit: structure mode's map-model comparison (misfit.py)
    stage_names = ("sharpness", "preprocess", "patches", "inference", "mapping", "coloring", "packing", "misfit")
    stages = {k: float(np.median([r["stages"].get(k, 0.0) for r in measured])) for k in stage_names}
    inf = [r["stages"]["inference"] for r in measured]
    gflops = float(np.median([r["flops"] / r["stages"]["inference"] / 1e9 for r in measured]))
    patches = measured[-1]["patches"]
    peak = max(p["peak"] for p in peaks)  # the higher sgemm figure: efficiency is, if anything, understated
    out = {"case": case, "seconds": round(wall, 3), "peak_rss_mb": round(peak_rss_mb, 1),
           "patches_per_s": round(patches / float(np.median(inf)), 1), "gflops": round(gflops, 2),
           "flop_efficiency": round(gflops / peak, 4),
           "reference_ratio": None if scale else round(ref["seconds"] / wall, 2),
           "reference_ratio_cpu": None if scale else round(ref["cpu_seconds"] / cpu, 2),
           "stages": {k: round(v, 3) for k, v in stages.items()}, "first_run_seconds": round(runs[0]["wall"], 3),
           "cpu_seconds": round(cpu, 3), "repeats": repeats, "patches": patches, "method": measured[-1]["method"],
           "sgemm_peak_gflops": round(peak, 2), "sgemm_runs_gflops": [round(p["peak"], 2) for p in peaks],
           "description": desc, "command": command,
           "reference_seconds": None if scale else round(ref["seconds"], 3),
           "reference": {k: (round(v, 3) if isinstance(v, float) and not k.startswith("max_abs") else v)
                         for k, v in ref.items()} if not scale else ref, "variants": variants,
           "load_average": [round(x, 2) for x in os.getloadavg()], **model_record(model, case in STRUCTURE_CASES)}
    out["map_voxels"] = int(np.prod(_volume_of(session, args).data.size, dtype=np.int64))
    if case in STRUCTURE_CASES:
        st = res.structure
        out["atoms"], out["ca_atoms"] = int(st.num_atoms), int((st.atoms.names == "CA").sum())
    return out


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _vm_hwm_mb() > 0
    except OSError:
        return False


def _vm_hwm_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


# --------------------------------------------------------------------------------------------- reference-style pipeline
def reference_pipeline(session, case: str, res, predictor, args: str) -> dict:
    """The original scripts' way, on the same grid, model and onnxruntime session (see the module docstring)."""
    from chimerax.defmap import preprocess as pp
    from chimerax.defmap import recipe
    spec = predictor.info.spec
    hr = spec.box // 2
    sess, name = predictor.session, predictor.input_name
    t = {}
    t0 = time.perf_counter()
    if case in ("6ez8", "emd3488"):
        structure, volume = res.structure, _volume_of(session, args)
        atoms = structure.atoms
        heavy = atoms.filter(atoms.element_numbers != 1)
        values, xyz_to_ijk = volume.full_matrix(), np.array(volume.data.xyz_to_ijk_transform.matrix)
        xyz = volume.scene_position.inverse().transform_points(heavy.scene_coords)
        inside = pp.points_inside_map(xyz, xyz_to_ijk, values.shape)
        # the same input the command's network reads: the window around the atoms, at the model's sharpness
        values, xyz_to_ijk, _ = recipe.structure_input(predictor.info, values, xyz_to_ijk, xyz, inside, None)
        prep = pp.prepare_points(values, xyz_to_ijk, xyz, spec, None, inside)
        if len(predictor.info.channels) > 1:  # the fitted model's density as the second channel, as the command
            prep.grid.values = pp.stack_channels(prep, predictor.info.channels, xyz,
                                                 pp.element_weights(heavy.element_names), spec)
        grid = prep.grid.values if prep.grid.values.ndim == 4 else prep.grid.values[None]  # (C, z, y, x)
        t["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # DEFMap create_dataset: a label grid (NaN where no atom), the list of every lattice voxel as a numpy array,
        # and a Python loop over it that skips NaN labels and cuts sub-voxels; here one per atom (no de-duplication)
        ijk = prep.grid.xyz_to_zyx_index(xyz[inside])
        atom_ids = np.flatnonzero(inside).tolist()
        at_voxel: dict[tuple, list] = {}
        for a, (z, y, x) in zip(atom_ids, ijk.tolist()):
            at_voxel.setdefault((z, y, x), []).append(a)
        label = np.full(grid.shape[1:], np.nan, dtype=np.float32)
        label[tuple(ijk.T)] = 1.0
        nz, ny, nx = grid.shape[1:]
        center_list = np.asarray([(z, y, x) for z in range(hr, nz - hr + 1) for y in range(hr, ny - hr + 1)
                                  for x in range(hr, nx - hr + 1)])
        data, owners = [], []
        for center in center_list:
            if isnan(label[center[0]][center[1]][center[2]]):
                continue
            sub_voxel = grid[:, center[0] - hr:center[0] + hr, center[1] - hr:center[1] + hr,
                             center[2] - hr:center[2] + hr]
            for a in at_voxel[(int(center[0]), int(center[1]), int(center[2]))]:
                data.append(sub_voxel)
                owners.append(a)
        data = np.array(data, dtype=np.float32)  # (N, C, box, box, box)
        t["patches"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # output channel 0 is the mean (a model with a variance head gives (N, 2, 1, 1, 1): mean, log-variance)
        preds = np.concatenate([sess.run(None, {name: data[s:s + REF_BATCH]})[0][:, 0].reshape(-1)
                                for s in range(0, len(data), REF_BATCH)])
        t["inference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res_index = heavy.unique_residues.indices(heavy.residues).tolist()
        sums, counts = {}, {}
        for a, v in zip(owners, preds.tolist()):
            r = res_index[a]
            sums[r] = sums.get(r, 0.0) + v
            counts[r] = counts.get(r, 0) + 1
        ref_res = {r: sums[r] / counts[r] for r in sums}
        t["mapping"] = time.perf_counter() - t0
        # agreement with the command's residue values (same network, same grid); the network's own values where
        # structure mode combined them with the density contrast (the reference scripts have no such step)
        net = res.residue_values if res.network_residue_values is None else res.network_residue_values
        ours = dict(zip(heavy.unique_residues.indices(res.residues).tolist(), net.tolist()))
        diff = max(abs(ref_res[r] - ours[r]) for r in ref_res)
        return {"seconds": sum(t.values()), **t, "n_patches": len(data), "max_abs_diff_vs_defmap": float(diff)}
    # voxel mode: every lattice voxel at or above the level, one patch each, Python loop over the whole lattice
    volume = _volume_of(session, args)
    level = float(args.split("level")[1])
    values = volume.full_matrix()
    d = volume.data
    prep = pp.prepare_voxels(values, np.array(d.xyz_to_ijk_transform.matrix), np.array(d.ijk_to_xyz_transform.matrix),
                             spec, level, None)
    grid = prep.grid.values
    above = np.zeros(grid.shape, dtype=bool)
    above[tuple(prep.centers.T)] = True
    t["preprocess"] = time.perf_counter() - t0
    n_all = len(prep.centers)
    budget = 60.0
    per_patch = _per_patch_rate(sess, name, grid, prep.centers, hr)  # seconds per patch at batch 32
    frac = min(1.0, budget / max(per_patch * n_all, 1e-9))
    rng = np.random.default_rng(0)
    keep = np.zeros(grid.shape, dtype=bool)
    if frac < 1.0:
        sel = prep.centers[rng.random(n_all) < frac]
        keep[tuple(sel.T)] = True
    else:
        keep = above
    t0 = time.perf_counter()
    nz, ny, nx = grid.shape
    data = []
    label = np.where(above, grid, np.nan)  # DEFMap create_dataset_for_prediction: NaN = not predicted
    center_list = np.asarray([(z, y, x) for z in range(hr, nz - hr + 1) for y in range(hr, ny - hr + 1)
                              for x in range(hr, nx - hr + 1)])
    for center in center_list:
        if isnan(label[center[0]][center[1]][center[2]]):
            continue
        if keep[center[0], center[1], center[2]]:
            data.append(grid[center[0] - hr:center[0] + hr, center[1] - hr:center[1] + hr,
                             center[2] - hr:center[2] + hr])
    data = np.array(data, dtype=np.float32)[:, None]
    t["patches"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, len(data), REF_BATCH):
        sess.run(None, {name: data[s:s + REF_BATCH]})
    inf = time.perf_counter() - t0
    scale = n_all / max(len(data), 1)
    t["inference"] = inf * scale
    return {"seconds": sum(t.values()), **t, "n_patches": n_all, "n_patches_run": len(data),
            "reference_extrapolated": bool(scale > 1.0)}


def _per_patch_rate(sess, name, grid, centers, hr) -> float:
    from chimerax.defmap.preprocess import extract_patches
    sample = extract_patches(grid, centers[:4 * REF_BATCH], 2 * hr)[:, None]
    t0 = time.perf_counter()
    for s in range(0, len(sample), REF_BATCH):
        sess.run(None, {name: sample[s:s + REF_BATCH]})
    return (time.perf_counter() - t0) / max(len(sample), 1)


def _volume_of(session, args: str):
    spec = args.split()[0]
    from chimerax.map import Volume
    return [m for m in session.models.list() if isinstance(m, Volume) and "#" + m.id_string == spec][0]


# -------------------------------------------------------------------------------------------------------------- levers
def run_levers(model: Path, subset: int = 2048) -> dict:
    """Each speed lever measured alone on case 6ez8's grid and centres (same process, same model: the map-only one,
    since the levers cut single-channel patches)."""
    import headless
    import onnxruntime as ort

    from chimerax.defmap import network, shared_features
    from chimerax.defmap import preprocess as pp
    session = headless.boot()
    open_case(session, "6ez8", False)
    s = session.models.list(model_id=(1,))[0]
    v = session.models.list(model_id=(2,))[0]
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    info = network.read_model_info(model)
    spec, hr = info.spec, info.spec.box // 2
    values, x2i = v.full_matrix(), np.array(v.data.xyz_to_ijk_transform.matrix)
    xyz = v.scene_position.inverse().transform_points(heavy.scene_coords)
    prep = pp.prepare_points(values, x2i, xyz, spec)
    grid, centers = prep.grid.values, prep.centers
    atom_vox = prep.grid.xyz_to_zyx_index(xyz)
    out = {"atoms": len(heavy), "unique_centres": len(centers), "grid": list(grid.shape),
           "sgemm": sgemm_peak_gflops()}

    def timed(f, n=3):
        return float(np.median(_repeat_times(f, n)))

    # patch extraction: Python loop per atom (un-deduplicated) vs one vectorized gather of the unique centres
    def loop():
        return np.array([grid[z - hr:z + hr, y - hr:y + hr, x - hr:x + hr] for z, y, x in atom_vox.tolist()],
                        dtype=np.float32)
    out["extract_python_loop_per_atom_s"] = timed(loop)
    out["extract_vectorized_unique_s"] = timed(lambda: pp.extract_patches(grid, centers, spec.box))
    # per-patch onnxruntime: batch size x threads x spinning x I/O binding, on a subset (rates are per patch)
    sub = pp.extract_patches(grid, centers[:subset], spec.box)[:, None]
    fpp = shared_features.chain_flops(shared_features.conv_chain(model), (spec.box,) * 3)
    rows = []
    for threads, spin in ((1, "1"), (2, "1"), (2, "0")):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for bs in (32, 256, 1024):
            def go(bs=bs, sess=sess, name=name):
                for i in range(0, len(sub), bs):
                    sess.run(None, {name: sub[i:i + bs]})
            dt = timed(go, 2)
            rows.append({"threads": threads, "spinning": spin == "1", "batch": bs, "io_binding": False,
                         "patches_per_s": len(sub) / dt, "gflops": len(sub) * fpp / dt / 1e9})
        bs = 256
        binding = sess.io_binding()
        outbuf = np.empty((bs, len(info.outputs), 1, 1, 1), np.float32)  # mean (and log-variance) channels

        def go_bound(sess=sess, name=name, bs=bs, binding=binding, outbuf=outbuf):
            for i in range(0, len(sub) - bs + 1, bs):
                binding.bind_cpu_input(name, sub[i:i + bs])
                binding.bind_output(sess.get_outputs()[0].name, "cpu", 0, np.float32, outbuf.shape,
                                    outbuf.ctypes.data)
                sess.run_with_iobinding(binding)
        n_bound = (len(sub) // bs) * bs
        dt = timed(go_bound, 2)
        rows.append({"threads": threads, "spinning": spin == "1", "batch": bs, "io_binding": True,
                     "patches_per_s": n_bound / dt, "gflops": n_bound * fpp / dt / 1e9})
    out["per_patch_onnxruntime"] = rows
    # whole-set methods on all unique centres: per-patch (best settings above, extrapolated), dense tiles, shared
    pred = network.Predictor(info, "cpu")
    pred.flops = 0.0
    t_dense = timed(lambda: pred.predict_dense(prep.grid, centers), 1)
    out["dense_tiles"] = {"seconds": t_dense, "gflop": pred.dense_flops(prep.grid, centers) / 1e9,
                          "centres_per_s": len(centers) / t_dense}
    for threads in (1, 2):
        net = shared_features.SparseConvNet(shared_features.conv_chain(model), threads=threads)
        t_sh = timed(lambda net=net: net.predict(grid, centers - hr), 2)
        gflop = net.estimate_flops(grid.shape, centers - hr) / 1e9
        out[f"shared_threads{threads}"] = {"seconds": t_sh, "gflop": gflop, "centres_per_s": len(centers) / t_sh,
                                           "gflops": gflop / t_sh}
    best = max(rows, key=lambda r: r["patches_per_s"])
    out["per_patch_best_extrapolated"] = {"seconds": len(centers) / best["patches_per_s"],
                                          "gflop": len(centers) * fpp / 1e9, **best}
    out["load_average"] = list(os.getloadavg())
    return out


def fmt_levers(lv: dict) -> str:
    lines = [f"6ez8: {lv['atoms']:,} heavy atoms -> {lv['unique_centres']:,} unique centre voxels "
             f"(one patch per unique voxel: {lv['atoms'] / lv['unique_centres']:.2f}x fewer patches); "
             f"grid {'x'.join(map(str, lv['grid']))}; sgemm peak {lv['sgemm']['peak']:.1f} GFLOP/s",
             f"patch extraction: Python loop per atom {lv['extract_python_loop_per_atom_s']:.3f} s; vectorized "
             f"unique {lv['extract_vectorized_unique_s']:.3f} s",
             "per-patch onnxruntime (2,048-patch subset):",
             "| threads | spinning | batch | I/O binding | patches/s | GFLOP/s |"]
    for r in lv["per_patch_onnxruntime"]:
        lines.append(f"| {r['threads']} | {r['spinning']} | {r['batch']} | {r['io_binding']} | "
                     f"{r['patches_per_s']:,.0f} | {r['gflops']:.1f} |")
    b, d = lv["per_patch_best_extrapolated"], lv["dense_tiles"]
    lines.append(f"all {lv['unique_centres']:,} centres: per-patch (best) {b['seconds']:.2f} s "
                 f"({b['gflop']:.0f} GFLOP);"
                 f" dense 32³ tiles {d['seconds']:.2f} s ({d['gflop']:.0f} GFLOP)")
    for t in (1, 2):
        sh = lv[f"shared_threads{t}"]
        lines.append(f"  shared features, {t} thread(s): {sh['seconds']:.2f} s ({sh['gflop']:.0f} GFLOP, "
                     f"{sh['gflops']:.1f} GFLOP/s)")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------------- driver
def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, "
            f"numpy {np.__version__}, onnxruntime {onnxruntime.__version__}")


def fmt_table(results: list[dict]) -> str:
    head = ("case", "end-to-end s", "preprocess", "patches", "inference", "mapping", "coloring", "patches/s",
            "peak RSS MB", "GFLOP/s", "sgemm peak", "FLOP eff.", "reference s", "ratio", "CPU-time ratio", "method")
    rows = [head]
    for r in results:
        st = r["stages"]
        rows.append((r["case"], f"{r['seconds']:.2f}", *(f"{st[k]:.3f}" for k in
                     ("preprocess", "patches", "inference", "mapping", "coloring")),
                     f"{r['patches_per_s']:,.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['gflops']:.1f}",
                     f"{r['sgemm_peak_gflops']:.1f}", f"{r['flop_efficiency']:.2f}",
                     *(("-", "-", "-") if r["reference_ratio"] is None else
                       (f"{r['reference_seconds']:.1f}" + ("*" if r["reference"].get("reference_extrapolated") else ""),
                        f"{r['reference_ratio']:.1f}", f"{r['reference_ratio_cpu']:.1f}")), r["method"]))
        for name, v in r.get("variants", {}).items():
            rows.append((f"  {r['case']} {name} true", f"{v['seconds']:.2f}",
                         *(f"{v['stages'].get(k, 0.0):.3f}" for k in
                           ("preprocess", "patches", "inference", "mapping", "coloring")),
                         "", f"{v['peak_rss_mb']:.0f}", "", "", "", "", "", "",
                         "normal_modes " + f"{v['stages']['normal_modes']:.3f} s" if "normal_modes" in v["stages"]
                         else ""))
    w = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    return "\n".join("| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(row)) + " |" for row in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small cases, 1 repeat (what make test runs)")
    ap.add_argument("--repeats", type=int, default=None, help="measured repeats per case (default 3; quick 1)")
    ap.add_argument("--cases", default=None, help="comma-separated subset of " + ", ".join(CASES + QUICK_CASES))
    ap.add_argument("--model", default=None, help="one ONNX model for every case (default: the shipped 5 Å "
                    "map + model model for structure cases and map-only model for voxel cases, else stand-ins)")
    ap.add_argument("--levers", action="store_true", help="also measure each speed lever alone on case 6ez8")
    ap.add_argument("--save", help="also write the JSON array to this file (tests/benchmarks/scaling.py reads it)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    a = ap.parse_args(argv)
    repeats = a.repeats or (1 if a.quick else 3)
    if a.case == "levers":
        print("BENCH-RESULT " + json.dumps(run_levers(Path(a.model))), flush=True)
        return 0
    if a.case:
        print("BENCH-RESULT " + json.dumps(run_case(a.case, Path(a.model), repeats, a.quick)), flush=True)
        return 0
    cases = a.cases.split(",") if a.cases else list(QUICK_CASES if a.quick else CASES)
    with tempfile.TemporaryDirectory() as tmp:
        if a.model:
            m = Path(a.model).resolve()
            models, which = {"structure": m, "voxel": m}, f"model {a.model} (every case)"
        else:
            models, which = bench_models(Path(tmp))
        print(f"bench: {which}", flush=True)
        print(f"bench: machine {machine()}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
        results = []
        for case in cases:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--case", case, "--model", str(case_model(models, case)),
                                   "--repeats", str(repeats)] + (["--quick"] if a.quick else []),
                                  capture_output=True, text=True, encoding="utf-8", cwd=ROOT)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-RESULT ")]
            if proc.returncode != 0 or not line:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                print(f"bench: case {case} failed (exit {proc.returncode})", flush=True)
                return 1
            r = json.loads(line[-1].split(" ", 1)[1])
            results.append(r)
            print(f"bench: {case}: {r['description']}; model {r['model']}; {r['patches']:,} patches by "
                  f"'{r['method']}'; "
                  f"{r['seconds']:.2f} s end to end (first run {r['first_run_seconds']:.2f} s); "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB; "
                  + ("" if r["reference_seconds"] is None else f"reference {r['reference_seconds']:.1f} s; ")
                  + "".join(f"{k} true {v['seconds']:.2f} s, {v['peak_rss_mb']:.0f} MB; "
                            for k, v in r.get("variants", {}).items())
                  + f"case took {time.perf_counter() - t0:.0f} s", flush=True)
        if a.levers:
            proc = subprocess.run([sys.executable, __file__, "--case", "levers", "--model",
                                   str(case_model(models, "levers"))],
                                  capture_output=True, text=True, encoding="utf-8", cwd=ROOT)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-RESULT ")]
            if proc.returncode != 0 or not line:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                print("bench: levers failed", flush=True)
                return 1
            print(fmt_levers(json.loads(line[-1].split(" ", 1)[1])), flush=True)
        print(fmt_table(results))
        if a.save:
            Path(a.save).write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
