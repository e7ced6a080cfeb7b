"""Structure and voxel mode on ChimeraX objects: read the map (or only the region the atoms need) from a Volume, gather
the atoms' arrays, make one call of the recipe (``recipe.py``) and wrap what it returns; every failure is a
one-sentence UserError.  Sets no attributes and colors nothing (``attributes.py`` does); keeps one onnxruntime session
per model and device.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
from chimerax.core.errors import UserError

from . import network, recipe
from . import preprocess as pp
from .errors import first_line
from .progress import Progress
from .progress import silent as silent_progress
from .recipe import RESIDUE_ATOMS_DEFAULT
from .residues import RESIDUE_ATOMS
from .rotations import ROTATIONS

MAP_RESOLUTION_RANGE = (0, 100)  # Å, both ends excluded (the commands' Bounded arguments use the same)
BATCH_SIZE_RANGE = (1, 1_000_000)  # patches per onnxruntime call, both ends included

_PREDICTORS: dict[tuple, network.Predictor] = {}


@dataclass
class StructureResult:
    """What a structure-mode run produced (returned to Python scripts)."""

    structure: object
    model: network.ModelInfo
    provider: str
    atoms: object  # Atoms that received a value
    atom_values: np.ndarray
    residues: object  # Residues that received a value
    residue_values: np.ndarray
    outside_atoms: int
    patches: int
    seconds: float
    stages: dict = field(default_factory=dict)
    attribute: str = "defmap"
    atom_rotation_values: np.ndarray | None = None  # (atoms, rotations) when test-time augmentation ran
    residue_sd: np.ndarray | None = None  # each residue's SD (uncertainty true); sd_source says what it is
    files: dict = field(default_factory=dict)  # outputs written: kind -> path
    sd_source: str = ""  # what residue_sd is (sd_source()), once uncertainty ran
    map_residue_values: np.ndarray | None = None  # the map-only prediction, when normal modes were combined
    nma_residue_values: np.ndarray | None = None  # the structure prior per residue (NaN: no C-alpha)
    prior: str = ""  # what gave it: "learned prior" (structure_prior.py) or "ANM"
    atom_sd: np.ndarray | None = None  # predicted SD per atom (models with a variance output, x calibrated scale)
    residue_atoms: str = "heavy"  # which atoms' values a residue value averages: ca, backbone or heavy
    contrast_weight: float = 0.0  # weight of the density contrast combined with the network (map + model models)
    network_residue_values: np.ndarray | None = None  # the network alone, when a contrast was combined
    native_contrast_weight: float = 0.0  # weight of the contrast at the map's own resolution (preprocess)
    native_resolution: float | None = None  # the resolution (Å) that contrast was computed at
    md_units: object = None  # md_units.Affine: how the values were put in MD units (add_md_units); None: network's
    expected: object = None  # expected.Expected: the r with MD this run can expect; None without the shipped fit
    misfit: object = None  # misfit.Misfit: where map and model disagree (residue order = residues); None: not assessed
    sharpness: object = None  # preprocess.Sharpness: the map's spectrum slope and the blur that matched it

    def as_dict(self) -> dict:
        res = self.residues
        sd = self.residue_sd
        extra = {} if self.nma_residue_values is None else {
            i: {"map": float(self.map_residue_values[i]),
                "normal_modes": None if np.isnan(v) else float(v)} for i, v in enumerate(self.nma_residue_values)}
        if self.network_residue_values is not None:  # the network alone, before the density contrasts
            for i, v in enumerate(self.network_residue_values):
                extra.setdefault(i, {})["network"] = float(v)
        if self.misfit is not None:  # map value at the residue's atoms over the map's contour level (misfit.py)
            for i, v in enumerate(self.misfit.fit):
                extra.setdefault(i, {})["fit"] = None if np.isnan(v) else float(v)
        return {"files": self.files, "normal_modes": self.nma_residue_values is not None, "sd_source": self.sd_source,
                **expected_dict(self.expected), **sharpness_dict(self.sharpness),
                "unexplained_density": self.unexplained(),
                "contrast_weight": self.contrast_weight, "native_contrast_weight": self.native_contrast_weight,
                "native_contrast_resolution": self.native_resolution,
                "structure": self.structure.atomspec, "model": self.model.name, "provider": self.provider,
                "attribute": self.attribute, "atoms_scored": int(len(self.atoms)), "atoms_outside": self.outside_atoms,
                "patches": self.patches, "seconds": round(self.seconds, 3), "stages": self.stages,
                "residues": [{"chain": r.chain_id, "number": int(r.number), "insertion": r.insertion_code,
                              "name": r.name, "value": float(v), **({} if sd is None else {"sd": float(sd[i])}),
                              **extra.get(i, {})}
                             for i, (r, v) in enumerate(zip(res, self.residue_values))]}


    def unexplained(self) -> list[dict]:
        """The regions of density the model does not explain (``misfit.Blob``), with the residues lining them."""
        if self.misfit is None:
            return []
        residues = self.structure.residues
        return [{"volume": round(b.volume, 1), "centre": [round(float(c), 2) for c in b.centre],
                 "residues": [residues[int(i)].string(style="command", omit_structure=True) for i in b.residues]}
                for b in self.misfit.blobs]


def sharpness_dict(sh) -> dict:
    """The JSON keys for the map's sharpness (``preprocess.Sharpness``): its spectrum slope, the slope the model
    blurs sharper maps down to, and the B-factor (Å²) that blur added (0: none)."""
    if sh is None:
        return {}
    return {"spectrum_slope": None if not np.isfinite(sh.slope) else round(float(sh.slope), 2),
            "sharpness_target": sh.target, "blur_b_factor": round(float(sh.b_factor), 2)}


def expected_dict(e) -> dict:
    """The JSON keys for a run's expected r (``expected.Expected``; null without the shipped fit)."""
    return {"expected_r": None if e is None else round(e.r, 3),
            "expected_r_range": None if e is None else [round(e.low, 3), round(e.high, 3)]}


@dataclass
class VoxelResult:
    """What a voxel-mode run produced: values at the lattice voxels at or above the level (``prep.centers``)."""

    volume: object
    model: network.ModelInfo
    provider: str
    values: np.ndarray  # log10 RMSF per scored voxel
    prep: pp.Prepared  # the model lattice and the scored voxels
    level: float
    seconds: float
    stages: dict = field(default_factory=dict)
    map_anm_weight: float = 0.0  # weight of normal modes of the map's own pseudo-atoms (nma.map_elastic_network)
    pseudo_atoms: int = 0  # how many pseudo-atoms the level's volume gave (one placement of the cubes)
    map_packing_weight: float = 0.0  # weight of the contour's packing around each voxel (map_shape.map_packing)
    map_intensity_weight: float = 0.0  # weight of the map's own intensity at each voxel (recipe.predict_voxels)
    dynamics: object = None  # the dynamics map, once the command has made it (attributes.make_dynamics_volume)
    level_chosen: bool = False  # the map chose the level (map_shape.auto_level): no 'level' was given
    expected: object = None  # expected.Expected: the r with MD this run can expect; None without the shipped fit
    sharpness: object = None  # preprocess.Sharpness: the map's spectrum slope and the blur that matched it

    @property
    def voxels(self) -> int:
        return len(self.values)

    def as_dict(self) -> dict:
        return {"map": self.volume.atomspec, "dynamics_map": None if self.dynamics is None else self.dynamics.atomspec,
                "model": self.model.name, "provider": self.provider, "voxels": self.voxels, "level": self.level,
                "level_chosen": self.level_chosen, **expected_dict(self.expected), **sharpness_dict(self.sharpness),
                "normal_modes": self.map_anm_weight > 0, "map_anm_weight": self.map_anm_weight,
                "pseudo_atoms": self.pseudo_atoms, "map_packing_weight": self.map_packing_weight,
                "map_intensity_weight": self.map_intensity_weight,
                "seconds": round(self.seconds, 3), "stages": self.stages}


def release_predictors() -> None:
    """Close the cached onnxruntime sessions.  Registered with atexit on first use: ORT-CUDA sessions alive at
    interpreter exit can hang ChimeraX on Linux, and the GUI's "app quit" trigger never fires under --nogui."""
    for p in _PREDICTORS.values():
        p.close()
    _PREDICTORS.clear()


def get_predictor(info: network.ModelInfo, device: str, logger=None) -> network.Predictor:
    """Cache one onnxruntime session per model file and device (session creation costs more than small runs)."""
    key = (str(info.path), info.path.stat().st_mtime_ns, device)
    p = _PREDICTORS.get(key)
    if p is None or p.session is None:
        try:
            p = network.Predictor(info, device)
        except network.ModelError as e:
            raise UserError(str(e)) from None
        if not _PREDICTORS:
            import atexit
            atexit.unregister(release_predictors)
            atexit.register(release_predictors)
        _PREDICTORS[key] = p
        if p.note and logger is not None:
            logger.info(f"DEFMap: {p.note}.")  # once per model and device, when the session is created
    return p


def check_ranges(map_resolution: float | None = None, batch_size: int | None = None) -> None:
    """The Python API's range checks (the commands' ``Bounded`` arguments refuse the same values when parsing)."""
    lo, hi = MAP_RESOLUTION_RANGE
    if map_resolution is not None and not (lo < map_resolution < hi):
        raise UserError(f"mapResolution must be between {lo:g} and {hi:g} Å, not {map_resolution:g}")
    lo, hi = BATCH_SIZE_RANGE
    if batch_size is not None and not (lo <= batch_size <= hi):
        raise UserError(f"batchSize must be between {lo:,} and {hi:,}, not {batch_size}")


def _resolve(model, map_resolution, structure: bool, batch_size: int | None = None) -> network.ModelInfo:
    check_ranges(map_resolution, batch_size)
    try:
        return network.resolve_model(model, map_resolution, structure)
    except network.ModelError as e:
        raise UserError(str(e)) from None


def _read(volume, nbytes: int, what: str, read):
    """``read()`` of map values, refused before allocating when memory is short; unreadable files are UserErrors."""
    try:
        pp.check_memory(nbytes, what)
        return read()
    except MemoryError as e:
        raise UserError(f"Map {volume.name} is too large to process: {e}") from None
    except Exception as e:  # file moved, truncated or unreadable since it was opened
        raise UserError(f"Could not read the values of map {volume.name}: {first_line(e)}") from None


def _map_arrays(volume):
    """The map's full-resolution values and its xyz<->ijk transforms in the map's own coordinates."""
    d = volume.data
    m = _read(volume, int(np.prod(d.size, dtype=np.int64)) * (np.dtype(d.value_type).itemsize + 1),
              f"reading map {volume.name} ({d.size[0]}×{d.size[1]}×{d.size[2]} voxels)", volume.full_matrix)
    if m is None or m.size == 0:
        raise UserError(f"Map {volume.name} has no data")
    if m.ndim != 3:
        raise UserError(f"Map {volume.name} is not a 3-D volume")
    if min(m.shape) < 2:
        raise UserError(f"Map {volume.name} is {m.shape[2]}×{m.shape[1]}×{m.shape[0]} voxels; DEFMap needs a 3-D map")
    if not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m):
        raise UserError(f"Map {volume.name} has non-numeric values ({m.dtype})")
    return m, np.array(d.xyz_to_ijk_transform.matrix), np.array(d.ijk_to_xyz_transform.matrix)


def _map_region(volume, xyz: np.ndarray, spec: pp.FeatureSpec, map_resolution: float | None):
    """Only the part of the map that structure mode resamples (``preprocess.points_source_window``), read from the file
    as a subregion, so a tomogram-sized map never has to fit in memory.

    Returns (values, xyz_to_ijk of the subregion, which atoms lie inside the whole map)."""
    d = volume.data
    size = np.array(d.size, dtype=np.int64)  # (i, j, k)
    if min(size) < 2:
        raise UserError(f"Map {volume.name} is {size[0]}×{size[1]}×{size[2]} voxels; DEFMap needs a 3-D map")
    dtype = np.dtype(d.value_type)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise UserError(f"Map {volume.name} has non-numeric values ({dtype})")
    m = np.array(d.xyz_to_ijk_transform.matrix, dtype=np.float64)
    inside = pp.points_inside_map(xyz, m, tuple(size[::-1]))
    if not inside.any():
        return None, m, inside
    lo, hi = pp.points_source_window(xyz[inside], m, size, spec, map_resolution)
    n = hi - lo
    values = _read(volume, int(np.prod(n)) * (dtype.itemsize + 1),
                   f"reading {n[0]}×{n[1]}×{n[2]} voxels of map {volume.name}",
                   lambda: d.matrix(ijk_origin=tuple(int(v) for v in lo), ijk_size=tuple(int(v) for v in n)))
    m[:, 3] -= lo  # indices into the subregion
    return values, m, inside


def _check_finite(volume, values):
    bad = 0
    for z in range(0, values.shape[0], 16):  # slabs: no map-sized mask
        bad += int(np.size(values[z:z + 16]) - np.count_nonzero(np.isfinite(values[z:z + 16])))
    if bad:
        raise UserError(f"Map {volume.name} has {bad:,} NaN or infinite values; fix or mask them before running defmap")


def _model_faults_as_user_errors(func):
    """A model that fails while running (shapes contradicting its metadata, non-finite output) is a UserError."""
    @functools.wraps(func)
    def wrapper(*args, **kw):
        try:
            out = func(*args, **kw)
        except network.ModelError as e:
            raise UserError(str(e)) from None
        values = out.atom_values if isinstance(out, StructureResult) else out.values
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise UserError(f"Model {out.model.name} gave {bad:,} NaN or infinite predictions; the model file is "
                            "faulty")
        return out
    return wrapper


@_model_faults_as_user_errors
def predict_structure(session, volume, atoms, model=None, map_resolution=None, device="auto", batch_size=None,
                      attribute="defmap", rotations: int = 1, progress: Progress | None = None,
                      residue_atoms: str = RESIDUE_ATOMS_DEFAULT) -> StructureResult:
    """Predict per-atom values for heavy atoms of one structure; sets no attributes (see
    ``attributes.store_attributes``)."""
    if residue_atoms not in RESIDUE_ATOMS:  # before any work (Python callers; the command's EnumOf checks too)
        raise UserError(f"residueAtoms must be one of {', '.join(RESIDUE_ATOMS)}, not {residue_atoms!r}")
    progress = progress or silent_progress()
    progress.update(0.0, "reading map")
    t_start = time.perf_counter()
    structures = atoms.unique_structures
    if len(structures) != 1:
        raise UserError(f"defmap needs atoms of one structure, got {len(structures)} structures; run it per model")
    heavy = atoms.filter(atoms.element_numbers != 1)
    if len(heavy) == 0:
        raise UserError("The structure has no heavy (non-hydrogen) atoms to score")
    info = _resolve(model, map_resolution, True, batch_size)
    s = structures[0]
    xyz = volume.scene_position.inverse().transform_points(heavy.scene_coords)  # in the map's own frame
    values, xyz_to_ijk, inside = _map_region(volume, xyz, info.spec, map_resolution)
    if not inside.any():
        raise UserError(f"No atoms of {s} lie inside map {volume.name}; is the model fitted to this map?")
    _check_finite(volume, values)
    predictor = get_predictor(info, device, session.logger)
    try:
        p = recipe.predict_atoms(predictor, values, xyz_to_ijk, xyz, heavy.element_names, heavy.names,
                                 s.residues.indices(heavy.residues), map_resolution=map_resolution, inside=inside,
                                 batch_size=batch_size, rotations=rotations, residue_atoms=residue_atoms,
                                 md_units=False, progress=progress)  # add_md_units, after normal modes
    except recipe.MapTooLarge as e:
        raise UserError(f"The map region is too large to process: {e}") from None
    except recipe.MapUnusable as e:
        raise UserError(f"Cannot use map {volume.name}: {e}") from None
    return StructureResult(structure=s, model=info, provider=predictor.provider, atoms=heavy.filter(p.scored),
                           atom_values=p.atom_values, residues=s.residues[p.residue_ids],
                           residue_values=p.residue_values, outside_atoms=int((~p.scored).sum()), patches=p.patches,
                           seconds=time.perf_counter() - t_start, stages=p.stages, attribute=attribute,
                           atom_rotation_values=p.atom_rotation_values, atom_sd=p.atom_sd, residue_atoms=residue_atoms,
                           contrast_weight=p.contrast_weight, network_residue_values=p.network_residue_values,
                           native_contrast_weight=p.native_contrast_weight, native_resolution=p.native_resolution,
                           expected=p.expected, misfit=p.misfit, sharpness=p.sharpness)


def add_normal_modes(result: StructureResult) -> None:
    """Combine the map prediction with the structure prior of the whole fitted model (``recipe.normal_mode_values``);
    raises UserError before anything is stored."""
    from chimerax.atomic import Residue
    t0 = time.perf_counter()
    s = result.structure
    atoms = s.atoms
    ca = atoms.filter((atoms.names == "CA") & (atoms.element_names == "C")
                      & (atoms.residues.polymer_types == Residue.PT_AMINO))
    residues = s.residues
    try:
        nma_vals, combined, result.prior = recipe.normal_mode_values(
            residues.indices(result.residues), result.residue_values, ca.scene_coords, residues.indices(ca.residues),
            recipe.anm_weight(result.model),
            atoms.filter(atoms.element_numbers != 1).scene_coords)
    except (ValueError, MemoryError) as e:
        raise UserError(f"normalModes: cannot compute normal modes of {s}: {first_line(e)}") from None
    map_vals = np.asarray(result.residue_values, dtype=np.float64)
    result.atom_values = result.atom_values + (combined - map_vals)[result.residues.indices(result.atoms.residues)]
    result.map_residue_values, result.nma_residue_values, result.residue_values = map_vals, nma_vals, combined
    result.stages["normal_modes"] = time.perf_counter() - t0
    result.seconds += result.stages["normal_modes"]


def add_md_units(result: StructureResult) -> None:
    """Put the values (and the SD, which ``add_uncertainty`` reads from them) in MD units, the last step before they
    are stored (``recipe.to_md_units``; the level comes from the whole structure's packing)."""
    atoms = result.structure.atoms
    heavy = atoms.filter(atoms.element_numbers != 1)
    ca = heavy.filter((heavy.names == "CA") & (heavy.element_names == "C"))
    t0 = time.perf_counter()
    recipe.to_md_units(result, recipe.model_kind(result.model), ca.scene_coords, heavy.scene_coords)
    result.stages["md_units"] = time.perf_counter() - t0


def sd_source(info: network.ModelInfo) -> str:
    """What ``uncertainty true`` reports as the SD for this model, in words for plots and the log."""
    if info.has_variance:
        cal = info.calibration
        where = info.fitted_where("sd_slope_fitted_on")
        shape = f"exp({float(cal.get('sd_slope', 0.0)):g} × the value's z-score"
        if float(cal.get("sd_disagreement", 0.0)):
            shape += f" + {float(cal['sd_disagreement']):g} × its disagreement with the model's packing"
        shape += ")"
        if cal.get("sd_run") == "expected_r":
            shape += " × the error the run's expected r implies"
        elif cal.get("sd_run") == "agree_raw":
            shape += " × a factor that grows as the network agrees less with the map's own values"
        if float(cal.get("sd_power", 1.0)) == 0.0:  # the fit gave the variance output no weight
            return (f"predicted SD (a scale times {shape}, fitted on {where}; the model's variance output carries no "
                    "weight there)")
        return f"predicted SD (the model's variance output, calibrated on {where})"
    return f"SD over the {len(ROTATIONS)} rotations of the cube"


def add_uncertainty(result: StructureResult) -> None:
    """``result.residue_sd``: each residue's SD (``recipe.residue_sd``: the variance output, or the spread over
    rotations), and ``result.sd_source`` naming which."""
    result.sd_source = sd_source(result.model)
    result.residue_sd = recipe.residue_sd(result.residues.indices(result.atoms.residues), result.atoms.names,
                                          len(result.residues), result.residue_atoms, result.atom_sd,
                                          result.atom_rotation_values)


@_model_faults_as_user_errors
def predict_voxels(session, volume, model=None, map_resolution=None, device="auto", batch_size=None,
                   level=None, dense=None, progress: Progress | None = None,
                   normal_modes: bool = False) -> VoxelResult:
    """Voxel-mode prediction at lattice voxels at or above ``level``, or without one the level the map's own
    histogram gives (``recipe.predict_voxels`` says what is combined); makes no dynamics map
    (``attributes.make_dynamics_volume``)."""
    progress = progress or silent_progress()
    progress.update(0.0, "reading map")
    t_start = time.perf_counter()
    info = _resolve(model, map_resolution, False, batch_size)
    values, xyz_to_ijk, ijk_to_xyz = _map_arrays(volume)
    _check_finite(volume, values)
    if level is None:
        try:  # a map ChimeraX cannot take statistics of (float16) it cannot contour or redraw either
            volume.matrix_value_statistics()
        except Exception:
            raise UserError(f"ChimeraX cannot read the value range of map {volume.name} ({values.dtype} values), so "
                            "it cannot draw the contour to color; give 'level'") from None
    predictor = get_predictor(info, device, session.logger)
    try:
        p = recipe.predict_voxels(predictor, values, xyz_to_ijk, ijk_to_xyz, level, map_resolution=map_resolution,
                                  batch_size=batch_size, dense=dense, normal_modes=normal_modes, progress=progress)
    except recipe.MapTooLarge as e:
        raise UserError(f"Map {volume.name} is too large to process: {e}") from None
    except recipe.MapUnusable as e:
        raise UserError(f"Cannot use map {volume.name}: {e}") from None
    except recipe.TooFewPseudoAtoms as e:
        raise UserError(f"normalModes: the density of {volume.name} above the level gives {e}") from None
    return VoxelResult(volume, info, predictor.provider, p.values, p.prep, p.level, time.perf_counter() - t_start,
                       p.stages, p.map_anm_weight, p.pseudo_atoms, p.map_packing_weight,
                       map_intensity_weight=p.map_intensity_weight, level_chosen=p.level_chosen,
                       expected=p.expected, sharpness=p.sharpness)
