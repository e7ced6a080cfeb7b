"""The ``defmap`` command: predict per-atom log10 RMSF from a map, store it as attributes, color and log it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from chimerax.core.commands import (
    BoolArg,
    CmdDesc,
    ColormapArg,
    ColormapRangeArg,
    EnumOf,
    FloatArg,
    IntArg,
    SaveFileNameArg,
    StringArg,
)
from chimerax.core.errors import UserError

from . import combination, map_shape, network, nma
from . import preprocess as pp
from .errors import first_line as _first_line
from .export import residue_z
from .keylabels import tidy_key
from .palette import DEFAULT_PALETTE
from .palette import default_palette as _default_palette
from .palette import no_value_color as _no_value_color
from .progress import Progress
from .progress import silent as silent_progress
from .residues import RESIDUE_ATOMS, residue_subset_means
from .residues import residue_means as _residue_means
from .rotations import ROTATIONS

_PREDICTORS: dict[tuple, network.Predictor] = {}
RESIDUE_ATOMS_DEFAULT = "backbone"  # best on md_reference (training/reports/validate_md_shipped.md)


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
    residue_sd: np.ndarray | None = None  # SD over rotations of each residue mean (uncertainty true)
    files: dict = field(default_factory=dict)  # outputs written: kind -> path
    map_residue_values: np.ndarray | None = None  # the map-only prediction, when normal modes were combined
    nma_residue_values: np.ndarray | None = None  # log10 ANM fluctuation per residue (NaN: no C-alpha)
    atom_sd: np.ndarray | None = None  # predicted SD per atom (models with a variance output, x calibrated scale)
    residue_atoms: str = "heavy"  # which atoms' values a residue value averages: ca, backbone or heavy
    contrast_weight: float = 0.0  # weight of the density contrast combined with the network (map + model models)
    network_residue_values: np.ndarray | None = None  # the network alone, when a contrast was combined
    native_contrast_weight: float = 0.0  # weight of the contrast at the map's own resolution (preprocess)
    native_resolution: float | None = None  # the resolution (Å) that contrast was computed at

    def as_dict(self) -> dict:
        res = self.residues
        sd = self.residue_sd
        extra = {} if self.nma_residue_values is None else {
            i: {"map": float(self.map_residue_values[i]),
                "normal_modes": None if np.isnan(v) else float(v)} for i, v in enumerate(self.nma_residue_values)}
        if self.network_residue_values is not None:  # the network alone, before the density contrasts
            for i, v in enumerate(self.network_residue_values):
                extra.setdefault(i, {})["network"] = float(v)
        return {"files": self.files, "normal_modes": self.nma_residue_values is not None,
                "contrast_weight": self.contrast_weight, "native_contrast_weight": self.native_contrast_weight,
                "native_contrast_resolution": self.native_resolution,
                "structure": self.structure.atomspec, "model": self.model.name, "provider": self.provider,
                "attribute": self.attribute, "atoms_scored": int(len(self.atoms)), "atoms_outside": self.outside_atoms,
                "patches": self.patches, "seconds": round(self.seconds, 3), "stages": self.stages,
                "residues": [{"chain": r.chain_id, "number": int(r.number), "insertion": r.insertion_code,
                              "name": r.name, "value": float(v), **({} if sd is None else {"sd": float(sd[i])}),
                              **extra.get(i, {})}
                             for i, (r, v) in enumerate(zip(res, self.residue_values))]}


@dataclass
class VoxelResult:
    volume: object
    dynamics: object
    model: network.ModelInfo
    provider: str
    voxels: int
    level: float
    seconds: float
    stages: dict = field(default_factory=dict)
    map_anm_weight: float = 0.0  # weight of normal modes of the map's own pseudo-atoms (nma.map_elastic_network)
    pseudo_atoms: int = 0  # how many pseudo-atoms the level's volume gave (one placement of the cubes)
    map_packing_weight: float = 0.0  # weight of the contour's packing around each voxel (map_shape.map_packing)

    def as_dict(self) -> dict:
        return {"map": self.volume.atomspec, "dynamics_map": self.dynamics.atomspec, "model": self.model.name,
                "provider": self.provider, "voxels": self.voxels, "level": self.level,
                "normal_modes": self.map_anm_weight > 0, "map_anm_weight": self.map_anm_weight,
                "pseudo_atoms": self.pseudo_atoms, "map_packing_weight": self.map_packing_weight,
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


def _resolve(model, map_resolution, structure: bool = False) -> network.ModelInfo:
    if map_resolution is not None and not (0 < map_resolution < 100):
        raise UserError(f"mapResolution must be between 0 and 100 Å, not {map_resolution:g}")
    try:
        return network.resolve_model(model, map_resolution, structure)
    except network.ModelError as e:
        raise UserError(str(e)) from None


def _map_arrays(volume):
    """The map's full-resolution values and its xyz<->ijk transforms in the map's own coordinates."""
    d = volume.data
    try:
        pp.check_memory(int(np.prod(d.size, dtype=np.int64)) * (np.dtype(d.value_type).itemsize + 1),
                        f"reading map {volume.name} ({d.size[0]}×{d.size[1]}×{d.size[2]} voxels)")
        m = volume.full_matrix()
    except MemoryError as e:
        raise UserError(f"Map {volume.name} is too large to process: {e}") from None
    except Exception as e:  # file moved, truncated or unreadable since it was opened
        raise UserError(f"Could not read the values of map {volume.name}: {_first_line(e)}") from None
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
    """Only the part of the map that structure mode resamples (the atoms' box plus the patch and filter margin), read
    from the file as a subregion, so a tomogram-sized map never has to fit in memory.

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
    sigma = pp.lowpass_sigma_voxels(spec, map_resolution)
    origin, shape = pp.lattice_for_points(xyz[inside], spec, pp.margin_voxels(spec, sigma))
    lattice = np.hstack([np.eye(3) * spec.voxel_size, np.reshape(origin, (3, 1))])
    cijk = pp._box_corners_xyz(shape, lattice) @ m[:, :3].T + m[:, 3]
    lo = np.clip(np.floor(cijk.min(axis=0)).astype(np.int64) - 1, 0, size - 1)
    hi = np.clip(np.ceil(cijk.max(axis=0)).astype(np.int64) + 2, lo + 1, size)
    n = hi - lo
    try:
        pp.check_memory(int(np.prod(n)) * (dtype.itemsize + 1),
                        f"reading {n[0]}×{n[1]}×{n[2]} voxels of map {volume.name}")
        values = d.matrix(ijk_origin=tuple(int(v) for v in lo), ijk_size=tuple(int(v) for v in n))
    except MemoryError as e:
        raise UserError(f"Map {volume.name} is too large to process: {e}") from None
    except Exception as e:  # file moved, truncated or unreadable since it was opened
        raise UserError(f"Could not read the values of map {volume.name}: {_first_line(e)}") from None
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
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kw):
        try:
            out = func(*args, **kw)
        except network.ModelError as e:
            raise UserError(str(e)) from None
        values = out.atom_values if isinstance(out, StructureResult) else out[0]
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        if bad:
            name = (out.model if isinstance(out, StructureResult) else out[2].info).name
            raise UserError(f"Model {name} gave {bad:,} NaN or infinite predictions; the model file is faulty")
        return out
    return wrapper


@_model_faults_as_user_errors
def predict_structure(session, volume, atoms, model=None, map_resolution=None, device="auto", batch_size=None,
                      attribute="defmap", rotations: int = 1, progress: Progress | None = None,
                      residue_atoms: str = RESIDUE_ATOMS_DEFAULT) -> StructureResult:
    """Predict per-atom values for heavy atoms of one structure; sets no attributes (see :func:`store_attributes`)."""
    if residue_atoms not in RESIDUE_ATOMS:  # before any work (Python callers; the command's EnumOf checks too)
        raise UserError(f"residueAtoms must be one of {', '.join(RESIDUE_ATOMS)}, not {residue_atoms!r}")
    progress = progress or silent_progress()
    progress.update(0.0, "reading map")
    t_start = time.perf_counter()
    stages = {}
    structures = atoms.unique_structures
    if len(structures) != 1:
        raise UserError(f"defmap needs atoms of one structure, got {len(structures)} structures; run it per model")
    heavy = atoms.filter(atoms.element_numbers != 1)
    if len(heavy) == 0:
        raise UserError("The structure has no heavy (non-hydrogen) atoms to score")
    info = _resolve(model, map_resolution, structure=True)
    if info.has_variance:  # the variance head is the uncertainty: one pass, no rotations
        rotations = 1
    # atoms in the map's own coordinate frame
    xyz = volume.scene_position.inverse().transform_points(heavy.scene_coords)
    values, xyz_to_ijk, inside = _map_region(volume, xyz, info.spec, map_resolution)
    if not inside.any():
        raise UserError(f"No atoms of {structures[0]} lie inside map {volume.name}; is the model fitted to this map?")
    _check_finite(volume, values)
    predictor = get_predictor(info, device, session.logger)
    progress.update(0.1, "preprocessing")
    t0 = time.perf_counter()
    try:
        prep = pp.prepare_points(values, xyz_to_ijk, xyz, info.spec, map_resolution, inside)
    except MemoryError as e:
        raise UserError(f"The map region is too large to process: {e}") from None
    except ValueError as e:
        raise UserError(f"Cannot use map {volume.name}: {e}") from None
    if len(info.channels) > 1:  # the fitted model's own density on the same lattice (preprocess.model_density)
        prep.grid.values = pp.stack_channels(prep, info.channels, xyz, pp.element_weights(heavy.element_names),
                                             info.spec)
    stages["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictor.seconds = 0.0
    per_rotation = np.empty((len(prep.centers), rotations), dtype=np.float64)
    for k in range(rotations):
        stage = f"inference on {len(prep.centers):,} patches"
        if rotations > 1:
            stage += f", rotation {k + 1}/{rotations}"
        part = progress.span(0.2 + 0.75 * k / rotations, 0.2 + 0.75 * (k + 1) / rotations)
        part.update(0.0, stage)
        per_rotation[:, k] = predictor.predict_centers(prep.grid, prep.centers, batch_size, rotation=k,
                                                       progress=lambda f, part=part, stage=stage: part.update(f, stage))
    progress.update(0.95, "residue means")
    preds = per_rotation.mean(axis=1)
    log_var = predictor.last_log_variance if info.has_variance else None
    stages["inference"] = predictor.seconds
    stages["patches"] = time.perf_counter() - t0 - predictor.seconds
    t0 = time.perf_counter()
    scored = prep.point_to_center >= 0
    atom_vals = preds[prep.point_to_center[scored]]
    scored_atoms = heavy.filter(scored)
    res_list, res_vals = _residue_means(scored_atoms, atom_vals)
    res_vals = residue_subset_means(scored_atoms, atom_vals, res_list, res_vals, residue_atoms)
    atom_sd = None
    if log_var is not None:
        atom_sd = network.calibrated_sd(np.exp(0.5 * log_var[prep.point_to_center[scored]]), atom_vals,
                                         info.calibration)
    net_vals, terms = None, []
    c_weight = float(info.calibration.get("contrast_weight", 0.0)) if pp.MODEL_CHANNEL in info.channels else 0.0
    n_weight = float(info.calibration.get("native_contrast_weight", 0.0))
    if c_weight > 0:  # + c z(contrast on the network's lattice), c fitted on the simulated CV
        grid = prep.grid.values
        contrast = pp.density_contrast(grid[info.channels.index(pp.MAP_CHANNEL)],
                                       grid[info.channels.index(pp.MODEL_CHANNEL)],
                                       prep.centers)[prep.point_to_center[scored]]
        terms.append((_residue_term(scored_atoms, contrast, res_list, residue_atoms), c_weight))
    native_res = None
    if n_weight > 0:  # + n z(contrast at the map's own resolution and sampling), n fitted on the simulated CV
        native_res = float(map_resolution or info.spec.filter_resolution)
        rigid = pp.rigid_density_at(xyz, pp.element_weights(heavy.element_names), native_res)[scored]
        native = pp.native_contrast(pp.map_values_at(values, xyz_to_ijk, xyz[scored]), rigid)
        terms.append((_residue_term(scored_atoms, native, res_list, residue_atoms), n_weight))
    if terms:
        net_vals, res_vals = res_vals, combination.combine_terms(res_vals, terms)
        atom_vals = atom_vals + (res_vals - net_vals)[res_list.indices(scored_atoms.residues)]
    stages["mapping"] = time.perf_counter() - t0
    return StructureResult(structure=structures[0], model=info, provider=predictor.provider, atoms=scored_atoms,
                           atom_values=atom_vals, residues=res_list, residue_values=res_vals,
                           outside_atoms=int((~scored).sum()), patches=len(prep.centers),
                           seconds=time.perf_counter() - t_start, stages=stages, attribute=attribute,
                           atom_rotation_values=per_rotation[prep.point_to_center[scored]] if rotations > 1 else None,
                           atom_sd=atom_sd, residue_atoms=residue_atoms,
                           contrast_weight=c_weight, network_residue_values=net_vals,
                           native_contrast_weight=n_weight, native_resolution=native_res)


def _residue_term(atoms, values: np.ndarray, res_list, residue_atoms: str) -> np.ndarray:
    """Per-residue means of a per-atom term over the residue atoms structure mode reports."""
    return residue_subset_means(atoms, values, res_list, _residue_means(atoms, values)[1], residue_atoms)



def add_normal_modes(result: StructureResult) -> None:
    """Combine the map prediction with ANM fluctuations of the whole fitted model (nma.py says why); atom values
    shift with their residue so residue means stay consistent.  Raises UserError before anything is stored."""
    from chimerax.atomic import Residue
    t0 = time.perf_counter()
    s = result.structure
    atoms = s.atoms
    ca = atoms.filter((atoms.names == "CA") & (atoms.element_names == "C")
                      & (atoms.residues.polymer_types == Residue.PT_AMINO))
    try:
        fluct = nma.anm_log_fluctuations(ca.scene_coords)
    except (ValueError, MemoryError) as e:
        raise UserError(f"normalModes: cannot compute normal modes of {s}: {_first_line(e)}") from None
    pos = result.residues.indices(ca.residues)
    nma_vals = np.full(len(result.residues), np.nan)
    nma_vals[pos[pos >= 0]] = fluct[pos >= 0]
    map_vals = np.asarray(result.residue_values, dtype=np.float64)
    combined = combination.combine(map_vals, nma_vals, float(result.model.calibration.get("anm_weight", 1.0)))
    result.atom_values = result.atom_values + (combined - map_vals)[result.residues.indices(result.atoms.residues)]
    result.map_residue_values, result.nma_residue_values, result.residue_values = map_vals, nma_vals, combined
    result.stages["normal_modes"] = time.perf_counter() - t0
    result.seconds += result.stages["normal_modes"]


def _check_attribute_name(attribute: str) -> None:
    """Refuse names of built-in atom/residue attributes (``coord``, ``name``, ...): writing them would change data."""
    from chimerax.atomic import Atom, Residue
    for name in (attribute, attribute + "_z", attribute + "_sd", attribute + "_map", attribute + "_nma"):
        if name.startswith("_") or any(hasattr(cls, name) for cls in (Atom, Residue)):
            raise UserError(f"attribute name '{attribute}' clashes with the built-in atom or residue attribute "
                            f"'{name}'; choose another name")


def register_attributes(session, attribute: str) -> None:
    from chimerax.atomic import Atom, Residue
    Atom.register_attr(session, attribute, "DEFMap", attr_type=float, can_return_none=True)
    Residue.register_attr(session, attribute, "DEFMap", attr_type=float, can_return_none=True)
    Residue.register_attr(session, attribute + "_z", "DEFMap", attr_type=float, can_return_none=True)


def store_attributes(session, result: StructureResult) -> None:
    """Atom/residue attributes; earlier values on this structure are replaced, atoms without a value get None."""
    name = result.attribute
    register_attributes(session, name)
    s = result.structure
    for a in s.atoms:
        setattr(a, name, None)
    for r in s.residues:
        setattr(r, name, None)
        setattr(r, name + "_z", None)
    for a, v in zip(result.atoms, result.atom_values):
        setattr(a, name, float(v))
    if result.nma_residue_values is not None:
        from chimerax.atomic import Residue
        for suffix, vals in (("_map", result.map_residue_values), ("_nma", result.nma_residue_values)):
            Residue.register_attr(session, name + suffix, "DEFMap", attr_type=float, can_return_none=True)
            for r in s.residues:
                setattr(r, name + suffix, None)
            for r, v in zip(result.residues, vals):
                setattr(r, name + suffix, None if np.isnan(v) else float(v))
    rv = result.residue_values
    z = residue_z(rv)
    for r, v, zv in zip(result.residues, rv, z):
        setattr(r, name, float(v))
        setattr(r, name + "_z", float(zv))


def color_structure(session, result: StructureResult, palette=None, range=None, key=True) -> None:
    """Ribbons, atoms, rings and molecular surfaces by the residue attribute, like ``color byattribute``."""
    from chimerax.std_commands.color import color_by_attr
    if palette is None:
        palette = _default_palette(session)
    atoms = result.structure.atoms
    color_by_attr(session, "r:" + result.attribute, atoms=atoms, palette=palette, range=range,
                  no_value_color=_no_value_color(), key=key, log_info=False, undo_name="defmap")
    if key:
        tidy_key(session)


def _stretches(result: StructureResult, n: int = 3, width: int = 5) -> tuple[list, list]:
    """Most flexible and most rigid windows of consecutive residues (per chain), for the log."""
    out = []
    by_chain: dict[str, list] = {}
    for r, v in zip(result.residues, result.residue_values):
        by_chain.setdefault(r.chain_id, []).append((r, v))
    for chain, items in by_chain.items():
        if len(items) < width:
            continue
        vals = np.array([v for _, v in items])
        means = np.convolve(vals, np.ones(width) / width, mode="valid")
        for i, m in enumerate(means):
            out.append((float(m), chain, items[i][0], items[i + width - 1][0]))
    out.sort(key=lambda t: t[0])

    def pick(seq):
        chosen = []
        for m, chain, r0, r1 in seq:
            if all(c != chain or r1.number < a.number or r0.number > b.number for _, c, a, b in chosen):
                chosen.append((m, chain, r0, r1))
            if len(chosen) == n:
                break
        return chosen
    return pick(reversed(out)), pick(out)


def log_structure_summary(session, result: StructureResult) -> None:
    from html import escape
    rv = result.residue_values
    flex, rigid = _stretches(result)

    def fmt(stretch):
        return ", ".join(f"/{c}:{a.number}-{b.number} ({m:.2f})" for m, c, a, b in stretch) or "—"
    rows = [("Model", f"{escape(result.model.name)} ({result.model.resolution:g} Å)"),
            ("Provider", escape(result.provider)),
            *([("Density contrast", f"network combined with the fitted model's density minus the map's at each atom "
                f"(z-scores, weight {result.contrast_weight:g} fitted on the simulated CV)")]
              if result.contrast_weight > 0 else []),
            *([("Contrast at map resolution", f"network combined with a rigid model's density minus the map's at each "
                f"atom, at {result.native_resolution:g} Å on the map's own grid (z-scores, weight "
                f"{result.native_contrast_weight:g} fitted on the simulated CV)")]
              if result.native_contrast_weight > 0 else []),
            ("Time", f"{result.seconds:.2f} s ({result.patches:,} patches)"),
            *([("Normal modes", f"map prediction combined with ANM of {np.isfinite(result.nma_residue_values).sum():,}"
                f" C-alpha atoms (sum of z-scores; attributes <i>{result.attribute}_map</i>, "
                f"<i>{result.attribute}_nma</i>)")] if result.nma_residue_values is not None else []),
            ("Residues scored", f"{len(rv):,} of {result.structure.num_residues:,}"),
            ("Atoms outside map", f"{result.outside_atoms:,}"),
            ("log10 RMSF (Å) min / median / max", f"{rv.min():.3f} / {np.median(rv):.3f} / {rv.max():.3f}"),
            ("Most flexible stretches", fmt(flex)),
            ("Most rigid stretches", fmt(rigid))]
    html = (f"<table border=1 cellpadding=4 style='border-collapse:collapse'><caption>DEFMap dynamics of "
            f"{escape(str(result.structure))}: residue attributes <i>{result.attribute}</i>, "
            f"<i>{result.attribute}_z</i></caption>"
            + "".join(f"<tr><th align=left>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    session.logger.info(html, is_html=True)
    if result.outside_atoms:
        session.logger.warning(f"{result.outside_atoms:,} heavy atoms of {result.structure} lie outside map and got "
                               "no DEFMap value")


@_model_faults_as_user_errors
def predict_voxels(session, volume, model=None, map_resolution=None, device="auto", batch_size=None,
                   level=None, dense=None, progress: Progress | None = None, normal_modes: bool = False
                   ) -> tuple[np.ndarray, pp.Prepared, network.Predictor, dict, float]:
    """Voxel-mode prediction at lattice voxels above the map's surface level, combined with what the map's own shape
    says (there is no model to ask): how deeply the contour buries each voxel (``map_shape.map_packing``) and, with
    ``normal_modes``, the normal modes of pseudo-atoms in the contour; each at the weight its model's calibration
    gives."""
    progress = progress or silent_progress()
    progress.update(0.0, "reading map")
    info = _resolve(model, map_resolution, structure=False)
    values, xyz_to_ijk, ijk_to_xyz = _map_arrays(volume)
    _check_finite(volume, values)
    if level is None:
        level = volume.minimum_surface_level
        if level is None:  # never shown as a surface: ChimeraX's own initial threshold (1% of voxels above it)
            try:
                level = float(min(volume.initial_surface_levels()[0]))
            except Exception:
                level = None
        if level is None or not np.isfinite(level):
            raise UserError(f"Map {volume.name} shows no surface level; show it as a surface or give 'level'")
    predictor = get_predictor(info, device, session.logger)
    stages = {}
    progress.update(0.1, "preprocessing")
    t0 = time.perf_counter()
    try:
        prep = pp.prepare_voxels(values, xyz_to_ijk, ijk_to_xyz, info.spec, float(level), map_resolution)
    except MemoryError as e:
        raise UserError(f"Map {volume.name} is too large to process: {e}") from None
    except ValueError as e:
        raise UserError(f"Cannot use map {volume.name}: {e}") from None
    stages["preprocess"] = time.perf_counter() - t0
    predictor.seconds = 0.0
    t0 = time.perf_counter()
    use_dense = info.fully_convolutional if dense is None else dense
    if use_dense and not info.fully_convolutional:
        raise UserError(f"Model {info.name} is not fully convolutional; use dense false")
    stage = f"inference on {len(prep.centers):,} voxels"
    part = progress.span(0.2, 0.9)
    part.update(0.0, stage)

    def done(f: float) -> None:
        part.update(f, stage)
    if dense is None:  # fastest exact method: shared features, or dense tiles when the centres fill the lattice
        preds = predictor.predict_centers(prep.grid, prep.centers, batch_size, allow_dense=info.fully_convolutional,
                                          progress=done)
    elif use_dense:
        preds = predictor.predict_dense(prep.grid, prep.centers, progress=done)
    else:
        preds = predictor.predict_patches(prep.grid, prep.centers, batch_size, progress=done)
    stages["inference"] = predictor.seconds
    stages["patches"] = time.perf_counter() - t0 - predictor.seconds
    terms = []  # what the map's own shape says, each at its weight fitted on the simulated CV
    packing = _map_packing_weight(info)
    if packing:  # + k z(how deeply the contour buries each voxel)
        t0 = time.perf_counter()
        progress.update(0.9, "packing of the contour")
        terms.append((map_shape.map_packing(prep.grid.values, len(prep.centers), info.spec.voxel_size, prep.centers),
                      packing))
        stages["packing"] = time.perf_counter() - t0
    if normal_modes:  # + e z(normal modes of the map's own pseudo-atoms)
        t0 = time.perf_counter()
        part = progress.span(0.9, 1.0)
        part.update(0.0, "normal modes of the map")
        fluct = nma.map_elastic_network(prep.grid.values, len(prep.centers), info.spec.voxel_size, prep.centers,
                                        progress=lambda f: part.update(f, "normal modes of the map"))
        if not np.isfinite(fluct).any():
            raise UserError(f"normalModes: the density of {volume.name} above level {level:g} gives too few "
                            "pseudo-atoms within 15 Å of each other for normal modes")
        terms.append((fluct, _map_anm_weight(info)))
        stages["normal_modes"] = time.perf_counter() - t0
    preds = combination.combine_terms(preds, terms)
    return preds, prep, predictor, stages, float(level)


def _map_anm_weight(info: network.ModelInfo) -> float:
    """Weight of the map's own normal modes in voxel mode (calibration, fitted on the CV; 1 for models without it)."""
    return float(info.calibration.get("map_anm_weight", 1.0))


def _map_packing_weight(info: network.ModelInfo) -> float:
    """Weight of the map's packing (``map_shape.map_packing``) in voxel mode (calibration, fitted on the CV; 0, i.e. the
    network alone, for models without it)."""
    return float(info.calibration.get("map_packing_weight", 0.0))


def make_dynamics_volume(session, volume, prep: pp.Prepared, preds: np.ndarray, name: str):
    """A new map on the model lattice holding predictions at scored voxels.

    Unscored voxels take the value of the nearest scored voxel, so surfaces colored by sampling this map at the
    contour edge show the prediction there rather than a fill value.
    """
    from chimerax.map import Volume, volume_from_grid_data
    from chimerax.map_data import ArrayGridData
    from scipy import ndimage
    earlier = [m for m in session.models.list(type=Volume) if m.name == name and m is not volume]
    if earlier:  # a repeated run replaces its dynamics map instead of piling up copies
        session.models.close(earlier)
    g = prep.grid
    scored = np.zeros(g.values.shape, dtype=bool)
    scored[tuple(prep.centers.T)] = True
    arr = np.zeros(g.values.shape, dtype=np.float32)
    arr[tuple(prep.centers.T)] = preds
    nearest = ndimage.distance_transform_edt(~scored, return_distances=False, return_indices=True)
    arr = arr[tuple(nearest)]
    grid = ArrayGridData(arr, origin=tuple(g.origin), step=(g.voxel_size,) * 3, name=name)
    v = volume_from_grid_data(grid, session, style="surface", show_dialog=False)
    v.scene_position = volume.scene_position
    v.display = False
    return v


def defmap(session, map, structure=None, model=None, map_resolution=None, device="auto", color=True,
           palette=None, range=None, key=True, attribute="defmap", batch_size=None, level=None, dense=None,
           return_json=False, uncertainty=False, profile=None, save_csv=None, save_structure=None,
           bfactor="value", normal_modes=False, residue_atoms=RESIDUE_ATOMS_DEFAULT):
    """Predict residue dynamics (log10 RMSF, Å) of a fitted model from a cryo-EM map, or per voxel without one."""
    outputs = {"uncertainty": uncertainty, "profile": profile, "saveCsv": save_csv, "saveStructure": save_structure}
    if structure is None and any(outputs.values()):
        raise UserError(f"{', '.join(k for k, v in outputs.items() if v)} need a structure ('structure ATOMS')")
    if batch_size is not None and not (1 <= batch_size <= 1_000_000):
        raise UserError(f"batchSize must be between 1 and 1,000,000, not {batch_size}")
    if not attribute.isidentifier():
        raise UserError(f"attribute name '{attribute}' must be a Python identifier (letters, digits, _)")
    _check_attribute_name(attribute)
    vols = list(map) if isinstance(map, (list, tuple)) else [map]
    if len(vols) != 1:
        raise UserError(f"defmap needs exactly one map, got {len(vols)}")
    volume = vols[0]
    if structure is not None:
        if len(structure) == 0:
            raise UserError("The structure specification matches no atoms")
        from . import export
        from . import profile_plot as dm_profile
        progress = Progress(session, f"DEFMap {structure.unique_structures[0]}" if structure.unique_structures
                            else "DEFMap")
        result = predict_structure(session, volume, structure, model, map_resolution, device, batch_size, attribute,
                                   rotations=len(ROTATIONS) if uncertainty else 1,
                                   progress=progress.span(0.0, 0.85 if normal_modes else 0.9),
                                   residue_atoms=residue_atoms)
        if normal_modes:
            progress.update(0.85, "normal modes")
            add_normal_modes(result)
        progress.update(0.9, "storing and coloring")
        t0 = time.perf_counter()
        store_attributes(session, result)
        if uncertainty:
            dm_profile.store_uncertainty(session, result)
        result.stages["mapping"] += time.perf_counter() - t0
        if color:
            t0 = time.perf_counter()
            color_structure(session, result, palette, range, key)
            result.stages["coloring"] = time.perf_counter() - t0
        log_structure_summary(session, result)
        progress.update(0.95, "writing outputs")
        export.write_outputs(session, result, profile=profile, save_csv=save_csv, save_structure=save_structure,
                             bfactor=bfactor)
        progress.done(f"DEFMap finished: {len(result.residues):,} residues of {result.structure} scored in "
                      f"{result.seconds:.1f} s on {result.provider}")
        return _returned(result, return_json)
    t_start = time.perf_counter()
    progress = Progress(session, f"DEFMap voxel mode {volume.name}")
    preds, prep, predictor, stages, level = predict_voxels(session, volume, model, map_resolution, device,
                                                           batch_size, level, dense, progress.span(0.0, 0.85),
                                                           normal_modes)
    progress.update(0.85, "dynamics map")
    t0 = time.perf_counter()
    dyn = make_dynamics_volume(session, volume, prep, preds, f"{volume.name} DEFMap dynamics")
    stages["mapping"] = time.perf_counter() - t0
    if color and volume.display and not volume.surfaces:
        # contour surfaces are computed at the next redraw; a script (open MAP; defmap #1) gets there first
        volume.update_drawings()
    if color and not volume.surfaces:
        session.logger.warning(f"Map {volume.name} has no surface to color; show it as a surface and run "
                               f"'color sample #{volume.id_string} map #{dyn.id_string}'")
    elif color:
        progress.update(0.95, "coloring")
        t0 = time.perf_counter()
        from chimerax.surface.colorvol import color_sample
        color_sample(session, volume.surfaces, dyn, palette=palette or _default_palette(session),
                     range=range or "full", key=key)
        if key:
            tidy_key(session)
        stages["coloring"] = time.perf_counter() - t0
    info = predictor.info
    map_anm = _map_anm_weight(info) if "normal_modes" in stages else 0.0
    enclosed = len(prep.centers) * info.spec.voxel_size ** 3  # Å^3 at or above the level
    pseudo = (len(map_shape.map_pseudo_atoms(prep.grid.values, len(prep.centers), info.spec.voxel_size))
              if map_anm else 0)
    packing = _map_packing_weight(info) if "packing" in stages else 0.0
    res = VoxelResult(volume, dyn, info, predictor.provider, len(prep.centers), level,
                      time.perf_counter() - t_start, stages, map_anm, pseudo, packing)
    shape = [f"its packing in the contour (weight {packing:g})"] if packing else []
    if map_anm:
        shape.append(f"normal modes of {pseudo:,} pseudo-atoms in it (weight {map_anm:g})")
    modes = "" if not shape else (
        f", combined with {' and '.join(shape)}; the level encloses {enclosed:,.0f} Å³, the volume of about "
        f"{enclosed / map_shape.RESIDUE_VOLUME:,.0f} residues")
    session.logger.info(
        f"DEFMap voxel mode on {volume.name} (level {level:g}): {len(prep.centers):,} voxels scored with "
        f"{info.name} on {predictor.provider} in {res.seconds:.2f} s{modes}; log10 RMSF min / median / max "
        f"{preds.min():.3f} / {float(np.median(preds)):.3f} / {preds.max():.3f}; dynamics map #{dyn.id_string}")
    progress.done(f"DEFMap voxel mode finished: {len(prep.centers):,} voxels of {volume.name} scored in "
                  f"{res.seconds:.1f} s; dynamics map #{dyn.id_string}")
    return _returned(res, return_json)


def _returned(result, return_json):
    if not return_json:
        return result
    from chimerax.core.commands import ArrayJSONEncoder, JSONResult
    return JSONResult(ArrayJSONEncoder().encode(result.as_dict()), result)


class PaletteArg(ColormapArg):
    """ChimeraX's palette argument with a one-line error for unknown palettes."""

    @staticmethod
    def parse(text, session):
        try:
            return ColormapArg.parse(text, session)
        except (UserError, ValueError):
            from chimerax.core.commands import AnnotationError, next_token
            token = next_token(text)[0] if text.strip() else text
            raise AnnotationError(f"'{token}' is not a known palette or color list; give a palette name such as "
                                  f"{DEFAULT_PALETTE} or colors like blue:white:red") from None


def defmap_desc():
    from chimerax.atomic import AtomsArg
    from chimerax.map import MapsArg
    return CmdDesc(
        required=[("map", MapsArg)],
        keyword=[("structure", AtomsArg), ("model", StringArg), ("map_resolution", FloatArg),
                 ("device", EnumOf(("auto", "gpu", "cpu"))), ("color", BoolArg), ("palette", PaletteArg),
                 ("range", ColormapRangeArg), ("key", BoolArg), ("attribute", StringArg), ("batch_size", IntArg),
                 ("level", FloatArg), ("dense", BoolArg), ("uncertainty", BoolArg),
                 ("profile", SaveFileNameArg), ("save_csv", SaveFileNameArg), ("save_structure", SaveFileNameArg),
                 ("bfactor", EnumOf(("value", "z"))), ("normal_modes", BoolArg),
                 ("residue_atoms", EnumOf(RESIDUE_ATOMS))],
        synopsis="predict protein dynamics (log10 RMSF) from a cryo-EM map")
