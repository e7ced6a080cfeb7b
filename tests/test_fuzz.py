"""Fuzzing ``defmap`` with hostile inputs in a real headless ChimeraX session.

Every input must end in a ``UserError`` (one sentence) or a result whose values are finite and whose warnings are
counted; map values, cells, atom coordinates and (unless coloring was asked for) colors must be unchanged.  The suite
counts what it tried; ``conftest.pytest_terminal_summary`` prints the totals.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from chimerax.core.commands import run
from chimerax.core.errors import UserError

from .hostile import (
    MapSpec,
    build_map,
    compare,
    corrupt_mrc,
    heavy_xyz_from_pdb,
    helix_pdb,
    nucleic_pdb,
    snapshot,
    write_mrc,
)


@dataclass
class Ctx:
    session: object
    tmp: Path
    model: Path
    seed: int = 0
    targets: list = field(default_factory=list)  # structures a structure-mode run may recolor

    def pdb(self, text: str, name: str = "s.pdb"):
        p = self.tmp / name
        p.write_text(text)
        s = run(self.session, f"open {p}", log=False)[0]
        return s


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Ctx], str]  # builds the inputs, returns the command (model path as {model})


CASES: list[Case] = []


def case(id_: str):
    def deco(fn):
        CASES.append(Case(id_, fn))
        return fn
    return deco


HELIX = helix_pdb(14)
HELIX_XYZ = heavy_xyz_from_pdb(HELIX)


def _map_and_helix(ctx: Ctx, spec: MapSpec, pdb: str = HELIX, points=None) -> None:
    """#1 a map built from spec (density at the helix), #2 the structure."""
    build_map(ctx.session, spec, HELIX_XYZ if points is None else points, seed=ctx.seed)
    ctx.targets.append(ctx.pdb(pdb))


# ------------------------------------------------------------------------------------------ 1. map values x modes

VALUE_SPECS: dict[str, MapSpec] = {
    "density": MapSpec(),
    "zeros": MapSpec(fill="zeros"),
    "constant_1": MapSpec(fill="constant", constant=1.0),
    "constant_neg": MapSpec(fill="constant", constant=-3.0),
    "constant_1e30": MapSpec(fill="constant", constant=1e30),
    "noise": MapSpec(fill="noise"),
    "all_nan": MapSpec(fill="nan"),
    "all_inf": MapSpec(fill="inf"),
    "all_neg_inf": MapSpec(fill="-inf"),
    "huge_values": MapSpec(fill="huge"),
    "denormal_values": MapSpec(fill="tiny"),
    "negative_values": MapSpec(fill="negative"),
    "some_nan": MapSpec(poison="nan"),
    "some_inf": MapSpec(poison="inf"),
    "some_neg_inf": MapSpec(poison="-inf"),
    "int8": MapSpec(dtype="int8"),
    "int16": MapSpec(dtype="int16"),
    "uint8": MapSpec(dtype="uint8"),
    "uint16": MapSpec(dtype="uint16"),
    "float64": MapSpec(dtype="float64"),
    "float16": MapSpec(dtype="float16"),
    "int32": MapSpec(dtype="int32"),
    "uint32": MapSpec(dtype="uint32"),
    "int64": MapSpec(dtype="int64"),
    "longdouble": MapSpec(dtype="longdouble"),
    "complex64": MapSpec(dtype="complex64"),
    "bool_mask": MapSpec(dtype="bool"),
}
MODES = {"structure": "defmap #1 structure #2 model {model}",
         "structure_nocolor": "defmap #1 structure #2 model {model} color false",
         "voxel": "defmap #1 model {model}"}

def _spec_cases(prefix: str, specs: dict[str, MapSpec], modes: dict[str, str]) -> None:
    """One case per (map spec, command): the map and the helix model, then the command."""
    for sid, spec in specs.items():
        for mode, cmd in modes.items():
            def _f(ctx, spec=spec, cmd=cmd):
                _map_and_helix(ctx, spec)
                return cmd
            case(f"{prefix}-{sid}-{mode}")(_f)


_spec_cases("values", VALUE_SPECS, MODES)


# ------------------------------------------------------------------------------------------ 2. lattice geometry x modes

def _rot(axis, deg):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = math.radians(deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


GEOMETRY_SPECS: dict[str, MapSpec] = {
    "one_voxel": MapSpec(shape_zyx=(1, 1, 1)),
    "one_plane": MapSpec(shape_zyx=(1, 40, 40)),
    "one_line": MapSpec(shape_zyx=(1, 1, 40)),
    "two_cubed": MapSpec(shape_zyx=(2, 2, 2), step=(10.0, 10.0, 10.0)),
    "three_cubed": MapSpec(shape_zyx=(3, 3, 3), step=(8.0, 8.0, 8.0)),
    "thin_slab": MapSpec(shape_zyx=(2, 60, 60)),
    "flat_x": MapSpec(shape_zyx=(40, 40, 1)),
    "anisotropic": MapSpec(shape_zyx=(20, 40, 80), step=(0.5, 1.0, 2.0)),
    "anisotropic_2": MapSpec(shape_zyx=(36, 30, 40), step=(1.1, 1.3, 0.9)),
    "tiny_voxels": MapSpec(shape_zyx=(30, 30, 30), step=(0.01, 0.01, 0.01)),
    "micro_voxels": MapSpec(shape_zyx=(10, 10, 10), step=(1e-5, 1e-5, 1e-5)),
    "huge_voxels": MapSpec(shape_zyx=(8, 8, 8), step=(20.0, 20.0, 20.0)),
    "giant_voxels": MapSpec(shape_zyx=(4, 4, 4), step=(500.0, 500.0, 500.0)),
    "monoclinic": MapSpec(cell_angles=(90.0, 110.0, 90.0)),
    "triclinic": MapSpec(cell_angles=(70.0, 80.0, 100.0)),
    "hexagonal": MapSpec(cell_angles=(90.0, 90.0, 120.0)),
    "acute_cell": MapSpec(cell_angles=(40.0, 45.0, 50.0)),
    "degenerate_cell": MapSpec(cell_angles=(120.0, 120.0, 120.0)),
    "rotated_z90": MapSpec(rotation=_rot((0, 0, 1), 90)),
    "rotated_oblique": MapSpec(rotation=_rot((1, 2, 3), 37)),
    "rotated_triclinic": MapSpec(cell_angles=(75.0, 85.0, 105.0), rotation=_rot((1, -1, 0.5), 63)),
    "far_origin": MapSpec(origin=(1e5, 1e5, 1e5)),
    "big_lazy_map": MapSpec(shape_zyx=(400, 400, 400), step=(6.0, 6.0, 6.0), fill="lazy", constant=1.0),
    "wide_lazy_map": MapSpec(shape_zyx=(4, 4, 4_000_000), step=(1.0, 1.0, 1.0), fill="lazy", constant=2.0),
}
GEOMETRY_MODES = {"structure": "defmap #1 structure #2 model {model}", "voxel": "defmap #1 model {model} level 0.05"}

_spec_cases("geometry", GEOMETRY_SPECS, GEOMETRY_MODES)


@case("geometry-map-moved")
def _map_moved(ctx):
    from chimerax.geometry import translation
    _map_and_helix(ctx, MapSpec())
    ctx.session.models.list(model_id=(1,))[0].scene_position = translation((3.0, -2.0, 1.0))
    return "defmap #1 structure #2 model {model}"


@case("geometry-map-rotated")
def _map_rotated(ctx):
    from chimerax.geometry import rotation
    _map_and_helix(ctx, MapSpec())
    ctx.session.models.list(model_id=(1,))[0].scene_position = rotation((0, 0, 1), 90, center=HELIX_XYZ.mean(0))
    return "defmap #1 structure #2 model {model}"


@case("geometry-structure-moved-away")
def _structure_moved(ctx):
    from chimerax.geometry import translation
    _map_and_helix(ctx, MapSpec())
    ctx.targets[0].scene_position = translation((1000.0, 0.0, 0.0))
    return "defmap #1 structure #2 model {model}"


# ------------------------------------------------------------------------------------------ 3. mismatched structures

def _structure_case(id_, pdb, spec_target="#2", map_points=None, spec=None, extra=""):
    def _s(ctx):
        _map_and_helix(ctx, spec or MapSpec(), pdb, map_points)
        return f"defmap #1 structure {spec_target} model {{model}}{extra}"
    case(f"structure-{id_}")(_s)


_structure_case("inside", HELIX)
_structure_case("outside", helix_pdb(14, center=(200.0, 0.0, 0.0)))
_structure_case("half_outside", helix_pdb(30), spec=MapSpec(shape_zyx=(30, 30, 30)))
_structure_case("at_edge", helix_pdb(14, center=(19.5, 0.0, 0.0)), map_points=HELIX_XYZ)
_structure_case("hydrogens_only", helix_pdb(14, only_hydrogens=True))
_structure_case("with_hydrogens", helix_pdb(14, hydrogens=True))
_structure_case("nucleic_only", nucleic_pdb(8), map_points=heavy_xyz_from_pdb(nucleic_pdb(8)))
_structure_case("nucleic_in_protein_map", nucleic_pdb(8))
_structure_case("altlocs", helix_pdb(14, altlocs=True))
_structure_case("nmr_models", helix_pdb(14, models=5))
_structure_case("waters_only", helix_pdb(14, hetatm_water=3), spec_target="#2:HOH")
_structure_case("with_waters", helix_pdb(14, hetatm_water=3))
_structure_case("single_atom", HELIX, spec_target="#2:3@CA")
_structure_case("empty_chain", HELIX, spec_target="#2/Z")
_structure_case("empty_atom_name", HELIX, spec_target="#2@XX")
_structure_case("no_such_model", HELIX, spec_target="#7")
_structure_case("map_as_structure", HELIX, spec_target="#1")
_structure_case("whole_session", HELIX, spec_target="all")
_structure_case("one_residue", helix_pdb(1))
_structure_case("long_helix_small_map", helix_pdb(60), spec=MapSpec(shape_zyx=(12, 12, 12)))
_structure_case("unknown_residues", helix_pdb(10, resname="XYZ"))
_structure_case("tiny_voxel_map", HELIX, spec=MapSpec(shape_zyx=(30, 30, 30), step=(0.05, 0.05, 0.05)))


@case("structure-two-structures")
def _two_structures(ctx):
    _map_and_helix(ctx, MapSpec())
    ctx.targets.append(ctx.pdb(nucleic_pdb(6), "n.pdb"))
    return "defmap #1 structure #2,3 model {model}"


@case("structure-nan-coordinates")
def _nan_coords(ctx):
    _map_and_helix(ctx, MapSpec())
    s = ctx.targets[0]
    c = s.atoms.coords
    c[::3] = np.nan
    s.atoms.coords = c
    return "defmap #1 structure #2 model {model}"


@case("structure-all-atoms-one-point")
def _one_point(ctx):
    _map_and_helix(ctx, MapSpec())
    s = ctx.targets[0]
    s.atoms.coords = np.zeros_like(s.atoms.coords) + HELIX_XYZ.mean(0)
    return "defmap #1 structure #2 model {model}"


@case("structure-no-atoms-left")
def _deleted_atoms(ctx):
    _map_and_helix(ctx, MapSpec())
    s = ctx.targets[0]
    s.atoms.filter(s.atoms.element_names != "H").delete()
    return "defmap #1 structure #2 model {model}"


# ------------------------------------------------------------------------------------------ 4. MRC files

def _valid_values(rng) -> np.ndarray:
    a = np.zeros((36, 36, 36), np.float32)
    idx = np.rint(HELIX_XYZ - HELIX_XYZ.mean(0) + 18).astype(int)
    np.add.at(a, (idx[:, 2], idx[:, 1], idx[:, 0]), 1.0)
    from scipy import ndimage
    return ndimage.gaussian_filter(a, 1.2) + rng.normal(0, 0.002, a.shape).astype(np.float32)


def _mrc_origin():
    return tuple(HELIX_XYZ.mean(0) - 18.0)


CORRUPTIONS = ("truncated", "header_only", "short_header", "empty", "garbage", "huge_dims", "bad_mode",
               "negative_dims", "zero_dims", "bad_nsymbt", "flipped_bytes", "zero_cell", "nan_cell", "bad_axis_order")
for _how in CORRUPTIONS:
    def _m(ctx, how=_how):
        rng = np.random.default_rng(ctx.seed)
        good = write_mrc(ctx.tmp / "good.mrc", _valid_values(rng), 1.0, _mrc_origin())
        bad = corrupt_mrc(good, ctx.tmp / f"{how}.mrc", how, rng)
        run(ctx.session, f"open {bad}", log=False)
        ctx.targets.append(ctx.pdb(HELIX))
        return "defmap #1 structure #2 model {model}"
    case(f"mrc-{_how}")(_m)

MRC_DTYPES = ("int8", "int16", "uint16", "float32", "float16")
for _dt in MRC_DTYPES:
    def _d(ctx, dt=_dt):
        v = _valid_values(np.random.default_rng(ctx.seed))
        if np.issubdtype(np.dtype(dt), np.integer):
            v = np.clip(v / v.max() * 100, 0, 100)
        write_mrc(ctx.tmp / "typed.mrc", v.astype(dt), 1.0, _mrc_origin())
        run(ctx.session, f"open {ctx.tmp / 'typed.mrc'}", log=False)
        ctx.targets.append(ctx.pdb(HELIX))
        return "defmap #1 structure #2 model {model}"
    case(f"mrc-mode-{_dt}")(_d)


@case("mrc-truncated-after-open")
def _trunc_after(ctx):
    p = write_mrc(ctx.tmp / "later.mrc", _valid_values(np.random.default_rng(0)), 1.0, _mrc_origin())
    v = run(ctx.session, f"open {p}", log=False)[0]
    v.data.clear_cache()
    p.write_bytes(p.read_bytes()[:2000])
    ctx.targets.append(ctx.pdb(HELIX))
    return "defmap #1 structure #2 model {model}"


@case("mrc-deleted-after-open")
def _deleted_after(ctx):
    p = write_mrc(ctx.tmp / "gone.mrc", _valid_values(np.random.default_rng(0)), 1.0, _mrc_origin())
    v = run(ctx.session, f"open {p}", log=False)[0]
    v.data.clear_cache()
    p.unlink()
    ctx.targets.append(ctx.pdb(HELIX))
    return "defmap #1 structure #2 model {model}"


# ------------------------------------------------------------------------------------------ 5. options

OPTIONS = {
    "level-above-max": "level 1e9", "level-below-min": "level -1e30", "level-nan": "level nan",
    "level-inf": "level inf", "resolution-zero": "mapResolution 0", "resolution-negative": "mapResolution -3",
    "resolution-huge": "mapResolution 1e9", "resolution-nan": "mapResolution nan",
    "resolution-tiny": "mapResolution 0.001", "resolution-sharper-than-model": "mapResolution 9.9",
    "batch-zero": "batchSize 0", "batch-negative": "batchSize -5", "batch-one": "batchSize 1",
    "batch-huge": "batchSize 100000000", "device-gpu": "device gpu", "device-cpu": "device cpu",
    "device-bogus": "device tpu", "attribute-empty": "attribute ''", "attribute-digit": "attribute 1x",
    "attribute-coord": "attribute coord", "attribute-name": "attribute name", "attribute-color": "attribute color",
    "attribute-display": "attribute display", "attribute-number": "attribute number",
    "attribute-bfactor": "attribute bfactor", "attribute-dotted": "attribute a.b",
    "attribute-dunder": "attribute __class__", "attribute-delete": "attribute delete",
    "attribute-structure": "attribute structure", "attribute-keyword": "attribute lambda",
    "palette-unknown": "palette nosuchpalette", "range-reversed": "range 5,1", "range-empty": "range 0,0",
    "key-false": "key false", "color-false": "color false", "json": "returnJson true",
    "dense-true": "dense true", "model-missing": None, "model-directory": None, "model-name-unknown": None,
    "uncertainty": "uncertainty true", "csv-under-a-file": "saveCsv /etc/hostname/out.csv",
    "profile-under-a-file": "profile /etc/hostname/p.png", "save-structure-under-a-file":
    "saveStructure /etc/hostname/s.pdb", "csv-is-directory": "saveCsv /tmp", "bfactor-z": "bfactor z",
    "normal-modes": "normalModes true", "normal-modes-uncertainty-z": "normalModes true uncertainty true bfactor z",
}
for _oid, _opt in OPTIONS.items():
    for _mode in ("structure", "voxel"):
        if _oid.startswith("attribute") and _mode == "voxel":
            continue

        def _o(ctx, oid=_oid, opt=_opt, mode=_mode):
            _map_and_helix(ctx, MapSpec())
            model = {"model-missing": str(ctx.tmp / "nope.onnx"), "model-directory": str(ctx.tmp),
                     "model-name-unknown": "no-such-model"}.get(oid, "{model}")
            base = f"defmap #1 structure #2 model {model}" if mode == "structure" else f"defmap #1 model {model}"
            return base + (f" {opt}" if opt else "")
        case(f"option-{_oid}-{_mode}")(_o)


for _vid in ("density", "noise", "some_nan", "int8"):
    for _mode, _cmd in (("structure", "defmap #1 structure #2"), ("voxel", "defmap #1 level 0.05")):
        def _dm(ctx, spec=VALUE_SPECS[_vid], cmd=_cmd):  # the installed (shipped) model, chosen by default
            _map_and_helix(ctx, spec)
            return cmd + " mapResolution 4.5"
        case(f"default-model-{_vid}-{_mode}")(_dm)


@case("option-two-maps")
def _two_maps(ctx):
    _map_and_helix(ctx, MapSpec())
    build_map(ctx.session, MapSpec(), HELIX_XYZ)
    return "defmap #1,3 structure #2 model {model}"


@case("option-structure-as-map")
def _structure_as_map(ctx):
    _map_and_helix(ctx, MapSpec())
    return "defmap #2 model {model}"


@case("option-no-map")
def _no_map(ctx):
    ctx.targets.append(ctx.pdb(HELIX))
    return "defmap #5 structure #2 model {model}"


# ------------------------------------------------------------------------------------------ 6. random combinations

N_RANDOM = 40
for _k in range(N_RANDOM):
    def _r(ctx, k=_k):
        rng = np.random.default_rng(1000 + k)
        shape = tuple(int(x) for x in rng.integers(1, 48, 3))
        step = tuple(float(x) for x in np.exp(rng.uniform(np.log(0.2), np.log(6.0), 3)))
        angles = tuple(float(x) for x in (rng.uniform(60, 120, 3) if rng.random() < 0.4 else (90.0, 90.0, 90.0)))
        fill = str(rng.choice(["density"] * 6 + ["zeros", "noise", "constant", "negative", "huge"]))
        poison = str(rng.choice(["nan", "inf", "-inf"])) if rng.random() < 0.15 else None
        dtype = str(rng.choice(["float32"] * 5 + ["int8", "int16", "float64"]))
        spec = MapSpec(shape_zyx=shape, step=step, cell_angles=angles, fill=fill, poison=poison, dtype=dtype)
        shift = rng.normal(0, 10, 3)
        pdb = str(rng.choice(["helix", "hydrogens", "nucleic", "altlocs", "models"]))
        text = {"helix": helix_pdb(int(rng.integers(1, 25)), center=shift), "hydrogens": helix_pdb(8, hydrogens=True),
                "nucleic": nucleic_pdb(6, center=shift), "altlocs": helix_pdb(10, altlocs=True),
                "models": helix_pdb(10, models=3)}[pdb]
        _map_and_helix(ctx, spec, text)
        mode = rng.choice(["structure", "voxel"], p=[0.7, 0.3])
        extras = [o for o in ("color false", "key false", "batchSize 7", "mapResolution 4") if rng.random() < 0.25]
        base = "defmap #1 structure #2 model {model}" if mode == "structure" else "defmap #1 model {model}"
        return " ".join([base] + extras)
    case(f"random-{_k:02d}")(_r)


# ------------------------------------------------------------------------------------------ the test

SENTENCE = re.compile(r"^\S.{3,400}$", re.S)


def _check_message(msg: str) -> None:
    assert SENTENCE.match(msg), f"UserError is not one short sentence: {msg!r}"
    assert "\n" not in msg.strip() and "Traceback" not in msg, f"UserError spans lines: {msg!r}"


def _check_result(res) -> tuple[int, int]:
    """(values, warnings) of a result; values must be finite."""
    from chimerax.defmap.predict import StructureResult, VoxelResult
    res = getattr(res, "python_value", res)
    if isinstance(res, StructureResult):
        assert len(res.atom_values) > 0 and np.isfinite(res.atom_values).all(), "non-finite atom values"
        assert np.isfinite(res.residue_values).all(), "non-finite residue values"
        return len(res.residue_values), int(res.outside_atoms > 0)
    assert isinstance(res, VoxelResult), f"unexpected result {type(res).__name__}"
    m = res.dynamics.full_matrix()
    assert np.isfinite(m).all(), "non-finite dynamics map"
    return res.voxels, 0


def _warning_counter():
    from chimerax.core.logger import PlainTextLog

    class WarningCounter(PlainTextLog):
        excludes_other_logs = False

        def __init__(self):
            super().__init__()
            self.warnings = 0

        def log(self, level, msg):
            if level >= self.LEVEL_WARNING:
                self.warnings += 1
            return False

    return WarningCounter()


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_hostile_input(c: Case, cx, random_model, tmp_path, fuzz_stats):
    fuzz_stats["tried"] += 1
    ctx = Ctx(cx, tmp_path, random_model, seed=len(c.id))
    outcome, message = "failure", ""
    try:
        try:
            command = c.setup(ctx)
        except UserError as e:  # the input could not even be opened: that is the answer the user gets
            message = str(e)
            _check_message(message)
            outcome = "usererror"
            return
        before = snapshot(cx)
        counter = _warning_counter()
        cx.logger.add_log(counter)
        try:
            res = run(cx, command.format(model=random_model), log=False)
        except UserError as e:
            message = str(e)
            _check_message(message)
            outcome = "usererror"
        else:
            _, warned = _check_result(res)
            outcome = "result"
            fuzz_stats["warned"] += int(bool(warned or counter.warnings))
        finally:
            cx.logger.remove_log(counter)
        coloring = "color false" not in command
        if " structure " in command:
            recolored = set(ctx.targets) if coloring else set()
        else:  # voxel mode colors the input map's surfaces
            recolored = set(before.maps) if coloring else set()
        problems = compare(before, cx, recolored)
        if problems:
            outcome = "failure"
        assert not problems, "; ".join(problems)
    finally:
        fuzz_stats[outcome] += 1
        if outcome == "failure" and sys.exc_info()[1] is not None:
            message = f"{type(sys.exc_info()[1]).__name__}: {sys.exc_info()[1]}".replace("\n", " ")[:300]
        if os.environ.get("DEFMAP_FUZZ_LOG"):  # one line per input, for reading what users would see
            with open(os.environ["DEFMAP_FUZZ_LOG"], "a", encoding="utf-8") as f:
                f.write(f"{c.id}\t{outcome}\t{message}\n")
        if outcome == "failure":
            fuzz_stats["failed_ids"].append(c.id)


def test_enough_hostile_inputs():
    assert len(CASES) >= 200, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)
