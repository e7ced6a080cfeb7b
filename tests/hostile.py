"""Builders for hostile inputs (robustness suite): small PDB texts, maps with odd values and cells, corrupt files,
and a snapshot of everything a ``defmap`` run must leave unchanged."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

# ---------------------------------------------------------------------------------------------------- structures

BACKBONE = (("N", "N", 1.6, -28.0, -0.9), ("CA", "C", 2.3, 0.0, 0.0), ("C", "C", 1.7, 28.0, 0.9),
            ("O", "O", 1.9, 40.0, 2.0), ("CB", "C", 3.3, 0.0, -0.5))
HYDROGENS = (("H", "H", 1.2, -40.0, -1.6), ("HA", "H", 2.6, 15.0, -0.9), ("HB1", "H", 4.2, 5.0, -0.8))
NUCLEIC = (("P", "P", 8.9, 0.0, 0.0), ("OP1", "O", 10.2, 3.0, 0.3), ("OP2", "O", 8.8, -8.0, 0.4),
           ("O5'", "O", 8.0, 8.0, 0.9), ("C5'", "C", 7.8, 15.0, 1.3), ("C4'", "C", 7.0, 21.0, 1.0),
           ("O4'", "O", 5.8, 19.0, 1.4), ("C3'", "C", 7.3, 28.0, 0.2), ("O3'", "O", 7.9, 33.0, -0.9),
           ("C1'", "C", 5.0, 24.0, 1.2), ("N9", "N", 3.6, 22.0, 1.0), ("C8", "C", 3.0, 14.0, 0.8),
           ("C4", "C", 2.6, 30.0, 1.0), ("N1", "N", 0.9, 40.0, 0.7))


def _pdb_line(serial: int, name: str, resname: str, chain: str, resnum: int, xyz, element: str,
              altloc: str = " ", occupancy: float = 1.0, record: str = "ATOM") -> str:
    padded = name if len(name) >= 4 or len(element) == 2 else f" {name:<3s}"
    return (f"{record:<6s}{serial:5d} {padded:<4s}{altloc}{resname:>3s} {chain}{resnum:4d}    "
            f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}{occupancy:6.2f}{20.0:6.2f}          {element:>2s}")


def _helix_atoms(n_res: int, center, templates, rise: float = 1.5, twist: float = 100.0):
    c = np.asarray(center, dtype=float)
    z0 = -0.5 * rise * (n_res - 1)
    for i in range(n_res):
        base = math.radians(twist * i)
        for name, element, radius, dphi, dz in templates:
            phi = base + math.radians(dphi)
            yield i, name, element, c + (radius * math.cos(phi), radius * math.sin(phi), z0 + rise * i + dz)


def helix_pdb(n_res: int = 12, center=(0.0, 0.0, 0.0), chain: str = "A", hydrogens: bool = False,
              only_hydrogens: bool = False, altlocs: bool = False, models: int = 1, resname: str = "ALA",
              hetatm_water: int = 0) -> str:
    """A poly-alanine helix (approximate geometry), optionally with hydrogens, alternate locations or NMR models."""
    templates = (() if only_hydrogens else BACKBONE) + (HYDROGENS if hydrogens or only_hydrogens else ())
    lines = []
    for m in range(models):
        if models > 1:
            lines.append(f"MODEL     {m + 1:4d}")
        serial = 1
        shift = np.array([0.3 * m, 0.0, 0.0])
        for i, name, element, xyz in _helix_atoms(n_res, center, templates):
            if altlocs and i % 2 == 0:
                for alt, occ, d in (("A", 0.6, 0.0), ("B", 0.4, 0.8)):
                    lines.append(_pdb_line(serial, name, resname, chain, i + 1, xyz + shift + d, element, alt, occ))
                    serial += 1
            else:
                lines.append(_pdb_line(serial, name, resname, chain, i + 1, xyz + shift, element))
                serial += 1
        for w in range(hetatm_water):
            lines.append(_pdb_line(serial, "O", "HOH", "W", w + 1, np.asarray(center) + (12.0 + 3 * w, 0, 0), "O",
                                   record="HETATM"))
            serial += 1
        if models > 1:
            lines.append("ENDMDL")
    return "\n".join(lines + ["END", ""])


def nucleic_pdb(n_res: int = 8, center=(0.0, 0.0, 0.0), chain: str = "B") -> str:
    lines = [_pdb_line(k + 1, name, "DA", chain, i + 1, xyz, element)
             for k, (i, name, element, xyz) in enumerate(_helix_atoms(n_res, center, NUCLEIC, rise=3.4, twist=36.0))]
    return "\n".join(lines + ["END", ""])


def heavy_xyz_from_pdb(text: str) -> np.ndarray:
    xyz = [(float(ln[30:38]), float(ln[38:46]), float(ln[46:54])) for ln in text.splitlines()
           if ln.startswith(("ATOM", "HETATM"))]
    return np.array(xyz, dtype=float).reshape(-1, 3)


# ---------------------------------------------------------------------------------------------------- maps

@dataclass
class MapSpec:
    """A map to build: lattice, values and what to do to them."""

    shape_zyx: tuple[int, int, int] = (40, 40, 40)
    step: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] | None = None  # None: centred on the density points
    cell_angles: tuple[float, float, float] = (90.0, 90.0, 90.0)
    rotation: tuple | None = None
    fill: str = "density"  # density | zeros | constant | noise | nan | inf | -inf | huge | tiny | negative | lazy
    constant: float = 1.0
    poison: str | None = None  # nan | inf | -inf: sprinkle a few bad voxels into otherwise good values
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)


def build_map(session, spec: MapSpec, points: np.ndarray | None, seed: int = 0, name: str = "hostile"):
    """A Volume in the session built from ``spec``, with Gaussian blobs at ``points`` when fill is 'density'."""
    from chimerax.map import volume_from_grid_data
    from chimerax.map_data import ArrayGridData
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in spec.shape_zyx)
    step = np.asarray(spec.step, dtype=float)
    if spec.fill == "lazy":  # a huge map that costs no memory: every voxel is the same read-only float
        arr = np.broadcast_to(np.float32(spec.constant), shape)
    else:
        arr = np.zeros(shape, dtype=np.float32)
    if spec.origin is None:
        c = np.zeros(3) if points is None or len(points) == 0 else points.mean(axis=0)
        extent = np.array(shape[::-1], dtype=float) * step
        origin = tuple(c - 0.5 * extent)
    else:
        origin = tuple(spec.origin)
    kw = {"origin": origin, "step": tuple(step), "cell_angles": tuple(spec.cell_angles)}
    if spec.rotation is not None:
        kw["rotation"] = tuple(tuple(r) for r in spec.rotation)
    g = ArrayGridData(arr, name=name, **kw)
    if spec.fill != "lazy":
        if spec.fill == "density" and points is not None and len(points):
            m = np.array(g.xyz_to_ijk_transform.matrix)
            ijk = points @ m[:, :3].T + m[:, 3]
            idx = np.rint(ijk).astype(np.int64)
            ok = np.all((idx >= 0) & (idx < np.array(shape[::-1])), axis=1)
            np.add.at(arr, (idx[ok, 2], idx[ok, 1], idx[ok, 0]), 1.0)
            arr[...] = ndimage.gaussian_filter(arr, 1.2)
            arr += rng.normal(0, 0.002, shape).astype(np.float32)
        elif spec.fill == "constant":
            arr[...] = spec.constant
        elif spec.fill == "noise":
            arr[...] = rng.normal(0, 1, shape)
        elif spec.fill in ("nan", "inf", "-inf"):
            arr[...] = float(spec.fill)
        elif spec.fill == "huge":
            arr[...] = rng.uniform(1e37, 3e38, shape)
        elif spec.fill == "tiny":
            arr[...] = rng.uniform(0, 1e-40, shape)  # denormals
        elif spec.fill == "negative":
            arr[...] = -rng.uniform(0, 1, shape)
        if spec.poison:
            flat = arr.reshape(-1)
            flat[rng.choice(flat.size, size=max(1, flat.size // 500), replace=False)] = float(spec.poison)
        if spec.dtype != "float32":
            dt = np.dtype(spec.dtype)
            if np.issubdtype(dt, np.integer):
                info = np.iinfo(dt)
                scaled = arr / (np.nanmax(np.abs(arr)) or 1.0) * min(info.max, 1000)
                conv = np.clip(np.nan_to_num(scaled), info.min, info.max).astype(dt)
            else:
                conv = arr.astype(dt)
            g = ArrayGridData(conv, name=name, **kw)
    v = volume_from_grid_data(g, session, show_dialog=False)
    return v


# ---------------------------------------------------------------------------------------------------- MRC files

def write_mrc(path: Path, values: np.ndarray, voxel_size: float = 1.0, origin=(0.0, 0.0, 0.0)) -> Path:
    import mrcfile
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(values)
        m.voxel_size = voxel_size
        m.header.origin = tuple(float(o) for o in origin)
    return path


def corrupt_mrc(src: Path, dst: Path, how: str, rng: np.random.Generator) -> Path:
    """Damaged copies of a valid MRC file: truncated, header-only, random bytes, lying headers."""
    import struct
    raw = bytearray(src.read_bytes())
    if how == "truncated":
        raw = raw[:1024 + (len(raw) - 1024) // 3]
    elif how == "header_only":
        raw = raw[:1024]
    elif how == "short_header":
        raw = raw[:300]
    elif how == "empty":
        raw = bytearray()
    elif how == "garbage":
        raw = bytearray(rng.integers(0, 256, len(raw), dtype=np.uint8).tobytes())
    elif how == "huge_dims":  # claims 50000^3 voxels (500 TB) over a small body
        struct.pack_into("<3i", raw, 0, 50000, 50000, 50000)
    elif how == "bad_mode":
        struct.pack_into("<i", raw, 12, 9)
    elif how == "negative_dims":
        struct.pack_into("<3i", raw, 0, -4, 10, 10)
    elif how == "zero_dims":
        struct.pack_into("<3i", raw, 0, 0, 0, 0)
    elif how == "bad_nsymbt":
        struct.pack_into("<i", raw, 92, 10 ** 9)
    elif how == "flipped_bytes":
        i = rng.integers(1024, len(raw), 64)
        for k in i:
            raw[k] ^= 0xFF
    elif how == "zero_cell":  # cell size 0: voxel size 0 Å
        struct.pack_into("<3f", raw, 40, 0.0, 0.0, 0.0)
    elif how == "nan_cell":
        struct.pack_into("<3f", raw, 40, float("nan"), 10.0, 10.0)
    elif how == "bad_axis_order":
        struct.pack_into("<3i", raw, 64, 1, 1, 3)
    else:
        raise ValueError(how)
    dst.write_bytes(bytes(raw))
    return dst


# ---------------------------------------------------------------------------------------------------- invariants

@dataclass
class Snapshot:
    maps: dict
    structures: dict


def snapshot(session, copy_limit: int = 20_000_000) -> Snapshot:
    """Map values and placement, atom coordinates and every color, for before/after comparison."""
    from chimerax.atomic import Structure
    from chimerax.map import Volume
    maps, structs = {}, {}
    for m in session.models.list():
        if isinstance(m, Volume):
            d = m.data
            mat = None
            if int(np.prod(d.size, dtype=np.int64)) <= copy_limit:
                try:
                    mat = m.full_matrix()
                except Exception:  # the file went away since it was opened: compare what can be compared
                    mat = None
            maps[m] = {"values": None if mat is None else mat.copy(), "origin": tuple(d.origin),
                       "surface_colors": [(np.array(sf.color), None if sf.vertex_colors is None
                                           else sf.vertex_colors.copy()) for sf in m.surfaces],
                       "step": tuple(d.step), "angles": tuple(d.cell_angles), "rotation": np.array(d.rotation),
                       "position": m.scene_position.matrix.copy()}
        elif isinstance(m, Structure):
            structs[m] = {"coords": m.atoms.coords.copy(), "scene": m.atoms.scene_coords.copy(),
                          "atom_colors": m.atoms.colors.copy(), "ribbon_colors": m.residues.ribbon_colors.copy(),
                          "ring_colors": m.residues.ring_colors.copy(), "n_atoms": m.num_atoms,
                          "names": list(m.atoms.names), "coordsets": m.num_coordsets,
                          "position": m.scene_position.matrix.copy()}
    return Snapshot(maps, structs)


def compare(before: Snapshot, session, recolored: set) -> list[str]:
    """What changed that must not have: input values, cells, coordinates, and colors of models not recolored
    (structures, or maps whose surfaces voxel mode colors)."""
    problems = []
    for v, b in before.maps.items():
        if v.deleted:
            problems.append(f"map {v} was closed")
            continue
        d = v.data
        if b["values"] is not None and not np.array_equal(v.full_matrix(), b["values"], equal_nan=True):
            problems.append(f"values of map {v.name} changed")
        if (tuple(d.origin), tuple(d.step), tuple(d.cell_angles)) != (b["origin"], b["step"], b["angles"]):
            problems.append(f"grid of map {v.name} changed")
        if not np.array_equal(v.scene_position.matrix, b["position"]):
            problems.append(f"map {v.name} moved")
        if v not in recolored:
            now = [(np.array(sf.color), sf.vertex_colors) for sf in v.surfaces]
            if len(now) != len(b["surface_colors"]) or any(
                    not np.array_equal(c0, c1) or (vc0 is None) != (vc1 is None)
                    or (vc0 is not None and not np.array_equal(vc0, vc1))
                    for (c0, vc0), (c1, vc1) in zip(b["surface_colors"], now)):
                problems.append(f"surface colors of map {v.name} changed though coloring was not asked for")
    for s, b in before.structures.items():
        if s.deleted:
            problems.append(f"structure {s} was closed")
            continue
        if s.num_atoms != b["n_atoms"] or list(s.atoms.names) != b["names"] or s.num_coordsets != b["coordsets"]:
            problems.append(f"atoms of {s} changed")
            continue
        if not np.array_equal(s.atoms.coords, b["coords"], equal_nan=True):
            problems.append(f"coordinates of {s} changed")
        if not np.array_equal(s.scene_position.matrix, b["position"]):
            problems.append(f"{s} moved")
        if s not in recolored:
            for k, now in (("atom_colors", s.atoms.colors), ("ribbon_colors", s.residues.ribbon_colors),
                           ("ring_colors", s.residues.ring_colors)):
                if not np.array_equal(now, b[k]):
                    problems.append(f"{k} of {s} changed though coloring was not asked for")
    return problems
