"""The prediction recipe from plain arrays: what ``defmap`` computes, without ChimeraX.

Structure mode (:func:`predict_atoms`): map values and their xyz->ijk transform, the heavy atoms' xyz (in the map's
frame), elements, atom names and an integer residue index per atom -> the network's value per atom, the residue
values (means over the ``residueAtoms`` subset), combined with the density contrasts the model's calibration weighs,
optionally with normal modes of the C-alpha atoms (:func:`add_normal_modes`) and the SD of each residue
(:func:`residue_sd`).  Voxel mode (:func:`predict_voxels`): a map and a level -> a value per lattice voxel at or above
the level, combined with the contour's packing and optionally the normal modes of the map's own pseudo-atoms.

Both modes first blur a map sharper than the training maps to their sharpness (``preprocess.match_sharpness``, at
the model's ``sharpness_slope``).

The ChimeraX adapter (``predict.py``) gathers these arrays from ChimeraX objects and makes one call; training can make
the same call on arrays it reads itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import combination, expected, map_shape, md_units, misfit, network, nma, structure_prior
from . import preprocess as pp
from .progress import Progress
from .progress import silent as silent_progress
from .residues import group_in_order, reported_means

RESIDUE_ATOMS_DEFAULT = "backbone"  # best on md_reference (training/reports/validate_md_shipped_backbone.md)


class MapUnusable(ValueError):
    """The map cannot be preprocessed for these atoms or this level (the message says why)."""


class MapTooLarge(MemoryError):
    """Preprocessing the map would need more memory than is available (the message says how much)."""


class TooFewPseudoAtoms(ValueError):
    """Voxel mode's normal modes: the contour gives too few pseudo-atoms close enough to each other."""


@dataclass
class AtomPrediction:
    """Structure mode's values for the atoms that lie inside the map (``scored``), residues in the order their first
    scored atom comes."""

    scored: np.ndarray  # bool per input atom: it lies inside the map and got a value
    atom_values: np.ndarray  # per scored atom; residue terms shift an atom with its residue
    residue_ids: np.ndarray  # the caller's residue index of each residue with a scored atom
    residue_values: np.ndarray
    atom_residue: np.ndarray  # per scored atom: its residue's position in residue_ids
    atom_names: np.ndarray  # of the scored atoms (residueAtoms picks by name)
    residue_atoms: str
    patches: int
    stages: dict = field(default_factory=dict)
    atom_rotation_values: np.ndarray | None = None  # (scored atoms, rotations) when more than one rotation ran
    atom_sd: np.ndarray | None = None  # calibrated SD per scored atom (models with a variance output)
    atom_head_sd: np.ndarray | None = None  # the variance head's own SD per scored atom, before calibration
    network_atom_values: np.ndarray | None = None  # per scored atom, the network alone
    term_values: dict = field(default_factory=dict)  # per residue, each density contrast combined (by name)
    contrast_weight: float = 0.0
    network_residue_values: np.ndarray | None = None  # the network alone, when a contrast was combined
    native_contrast_weight: float = 0.0
    native_resolution: float | None = None
    map_residue_values: np.ndarray | None = None  # before normal modes, when they were combined
    nma_residue_values: np.ndarray | None = None  # the structure prior per residue (NaN: no C-alpha)
    prior: str = ""  # what gave it: "learned prior" (structure_prior) or "ANM"
    md_units: md_units.Affine | None = None  # how values were put in MD units (to_md_units); None: network units
    run_features: dict = field(default_factory=dict)  # what the run measures for its expected r (expected.py)
    residue_packing: np.ndarray | None = None  # per residue, log(1 + heavy atoms within 12 Å of its C-alpha)
    expected: expected.Expected | None = None  # the r with MD this run can expect (None: no shipped estimate)
    misfit: misfit.Misfit | None = None  # where map and model disagree (None: the map has no contour to compare)
    sharpness: pp.Sharpness | None = None  # the map's sharpness and the blur that matched it to the training maps'

    def residue_sd(self) -> np.ndarray:
        """Each residue's SD (:func:`residue_sd`)."""
        return residue_sd(self.atom_residue, self.atom_names, len(self.residue_ids), self.residue_atoms,
                          self.atom_sd, self.atom_rotation_values)


def predict_atoms(predictor: network.Predictor, values: np.ndarray, xyz_to_ijk: np.ndarray, xyz: np.ndarray,
                  elements, atom_names, residue_index, *, map_resolution: float | None = None,
                  inside: np.ndarray | None = None, batch_size: int | None = None, rotations: int = 1,
                  residue_atoms: str = RESIDUE_ATOMS_DEFAULT, ca: tuple[np.ndarray, np.ndarray] | None = None,
                  md_units: bool = True, progress: Progress | None = None) -> AtomPrediction:
    """Structure mode on arrays: ``values`` [z, y, x] with ``xyz_to_ijk`` (3x4), heavy atoms' ``xyz`` in the map's
    frame, their ``elements``, ``atom_names`` and integer ``residue_index``; ``inside`` marks atoms inside the whole
    map when ``values`` is a subregion of it; ``ca`` = (C-alpha xyz, their residue index) adds normal modes at the
    model's ``anm_weight``; ``md_units`` puts the values in MD units last (:func:`to_md_units`).  Raises
    :class:`MapUnusable` / :class:`MapTooLarge` when the map cannot be preprocessed, ``network.ModelError`` when the
    model fails."""
    progress = progress or silent_progress()
    info = predictor.info
    if info.has_variance:  # the variance head is the uncertainty: one pass, no rotations
        rotations = 1
    stages: dict = {}
    progress.update(0.05, "sharpness")
    t0 = time.perf_counter()
    given, given_x2i = values, xyz_to_ijk  # the misfit flags read the map as the user sees it
    if inside is None:
        inside = pp.points_inside_map(np.asarray(xyz, dtype=np.float64), xyz_to_ijk, values.shape)
    values, xyz_to_ijk, sharp = structure_input(info, values, xyz_to_ijk, xyz, inside, map_resolution)
    stages["sharpness"] = time.perf_counter() - t0
    progress.update(0.1, "preprocessing")
    t0 = time.perf_counter()
    weights = pp.element_weights(elements)
    prep = _prepared(lambda: pp.prepare_points(values, xyz_to_ijk, xyz, info.spec, map_resolution, inside))
    if len(info.channels) > 1:  # the fitted model's own density on the same lattice (preprocess.model_density)
        prep.grid.values = pp.stack_channels(prep, info.channels, xyz, weights, info.spec)
    stages["preprocess"] = time.perf_counter() - t0
    per_rotation = _infer_rotations(predictor, prep, batch_size, rotations, progress, stages)
    progress.update(0.95, "residue means")
    preds = per_rotation.mean(axis=1)
    log_var = predictor.last_log_variance if info.has_variance else None
    t0 = time.perf_counter()
    scored = prep.point_to_center >= 0
    at = prep.point_to_center[scored]
    residue_ids, group = group_in_order(np.asarray(residue_index)[scored])
    out = AtomPrediction(scored=scored, atom_values=preds[at], residue_ids=residue_ids, residue_values=None,
                         atom_residue=group, atom_names=np.asarray(atom_names)[scored], residue_atoms=residue_atoms,
                         patches=len(prep.centers), stages=stages,
                         atom_rotation_values=per_rotation[at] if rotations > 1 else None, sharpness=sharp)
    out.residue_values = network_means = _residue_values(out, out.atom_values)
    out.network_atom_values = out.atom_values
    native_res = float(map_resolution or info.spec.filter_resolution)
    map_at = pp.map_values_at(values, xyz_to_ijk, xyz[scored])
    terms = _contrast_terms(out, info, prep, map_at, xyz, weights, native_res)
    out.run_features = _structure_features(out, network_means, map_at, native_res, xyz, elements, atom_names,
                                           residue_index)
    out.expected = expected.expected("structure", out.run_features)
    if terms:
        out.network_residue_values = network_means
        out.residue_values = combination.combine_terms(network_means, terms)
        out.atom_values = out.atom_values + (out.residue_values - network_means)[group]
    if log_var is not None:
        out.atom_head_sd = np.exp(0.5 * log_var[at])
        apart = expected.packing_disagreement(out.residue_values, out.residue_packing)[group]
        out.atom_sd = network.calibrated_sd(out.atom_head_sd, out.network_atom_values, info.calibration,
                                            run_sd_factor(info, out), apart)
    stages["mapping"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out.misfit = misfit.assess(given, given_x2i, xyz[scored], np.asarray(residue_index)[scored], native_res,
                               out.residue_ids)
    stages["misfit"] = time.perf_counter() - t0
    finish(out, info, xyz, elements, atom_names, ca, md_units)
    return out


def finish(pred: AtomPrediction, info: network.ModelInfo, xyz: np.ndarray, elements, atom_names,
           ca: tuple[np.ndarray, np.ndarray] | None = None, md_units: bool = True) -> None:
    """The steps after the map terms, in place: normal modes of ``ca`` (C-alpha xyz, residue index) when given, then
    MD units (:func:`to_md_units`, the level from these heavy atoms' C-alpha atoms and packing)."""
    if ca is not None:
        add_normal_modes(pred, ca[0], ca[1], anm_weight(info), heavy_xyz=xyz)
    if md_units:
        is_ca = (np.asarray(atom_names) == "CA") & (np.asarray(elements) == "C")
        to_md_units(pred, model_kind(info), np.asarray(xyz)[is_ca], xyz)


def structure_input(info: network.ModelInfo, values: np.ndarray, xyz_to_ijk: np.ndarray, xyz: np.ndarray,
                    inside: np.ndarray, map_resolution: float | None
                    ) -> tuple[np.ndarray, np.ndarray, pp.Sharpness]:
    """The map as structure mode reads it: the part around the atoms inside it (``preprocess.points_source_window``)
    with its xyz->ijk, blurred to the model's sharpness (``preprocess.match_sharpness``).  Cutting the window first
    makes the slope, and so the blur, the same whether a caller passes the whole map or the command its subregion."""
    if not np.any(inside):  # no part to read (preprocessing refuses the map): nothing to measure or blur
        return values, xyz_to_ijk, pp.Sharpness(float("nan"), sharpness_slope(info), 0.0)
    size = np.array(values.shape[::-1], dtype=np.int64)
    lo, hi = pp.points_source_window(np.asarray(xyz, dtype=np.float64)[inside], xyz_to_ijk, size, info.spec,
                                     map_resolution)
    xyz_to_ijk = np.array(xyz_to_ijk, dtype=np.float64).reshape(3, 4)
    xyz_to_ijk[:, 3] -= lo
    values = values[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    values, sharp = pp.match_sharpness(values, xyz_to_ijk, float(map_resolution or info.spec.filter_resolution),
                                       sharpness_slope(info))
    return values, xyz_to_ijk, sharp


def run_sd_factor(info: network.ModelInfo, pred: AtomPrediction) -> float:
    """The SD's factor for this run (``network.calibrated_sd``; :func:`run_factor_from` on what the run measured)."""
    return run_factor_from(info.calibration, pred.run_features.get("agree_raw", np.nan),
                           None if pred.expected is None else pred.expected.r, pred.residue_values)


def run_factor_from(calibration: dict, agree_raw: float, expected_r: float | None, values: np.ndarray) -> float:
    """The SD's run factor from a run's measurements, the one home for the bundle and ``md-calibrate``.  The
    calibration's ``sd_run`` says which: "agree_raw", exp(``sd_run_slope`` x (``agree_raw``, the network's agreement
    with the map's own values, - ``sd_run_centre``)): where the network agrees less with the map it reads, it errs
    more on every residue; "expected_r", ``expected.error_factor`` at ``expected_r`` times the SD of the residue
    ``values``; else (or without the measurement) 1."""
    sd_run = calibration.get("sd_run")
    if sd_run == "agree_raw":
        x = float(agree_raw)
        if not np.isfinite(x):
            return 1.0
        return float(np.exp(float(calibration["sd_run_slope"]) * (x - float(calibration["sd_run_centre"]))))
    if sd_run != "expected_r" or expected_r is None:
        return 1.0
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return expected.error_factor(float(expected_r)) * float(v.std()) if len(v) > 1 else 1.0


def model_kind(info: network.ModelInfo) -> str:
    """"map+model" for a network that reads the fitted model's density too, else "map" (``md_units`` keys)."""
    return "map+model" if pp.MODEL_CHANNEL in info.channels else "map"


def to_md_units(pred, kind: str, ca_xyz: np.ndarray, heavy_xyz: np.ndarray) -> None:
    """Put a structure-mode prediction (``AtomPrediction`` or the adapter's result: ``atom_values``,
    ``residue_values``, ``atom_sd``, ``atom_rotation_values``) in MD units (``md_units.py``), in place, the last
    step; records the map as ``pred.md_units``.  Without the shipped calibration, or for a kind it lacks, the values
    stay in network units (``pred.md_units`` None)."""
    scale = md_units.load_scale()
    aff = md_units.affine(scale, kind, pred.residue_values, ca_xyz, heavy_xyz) if scale is not None else None
    pred.md_units = aff
    if aff is None:
        return
    pred.atom_values, pred.residue_values = aff.values(pred.atom_values), aff.values(pred.residue_values)
    if pred.atom_sd is not None:
        pred.atom_sd = aff.sd(pred.atom_sd)
    if pred.atom_rotation_values is not None:  # their spread is the SD (models without a variance output)
        pred.atom_rotation_values = aff.values(pred.atom_rotation_values)


def _prepared(prepare) -> pp.Prepared:
    """``prepare()``'s result, its ValueError and MemoryError told apart from the model's own faults."""
    try:
        return prepare()
    except MemoryError as e:
        raise MapTooLarge(str(e)) from None
    except ValueError as e:
        raise MapUnusable(str(e)) from None


def _infer_rotations(predictor: network.Predictor, prep: pp.Prepared, batch_size: int | None, rotations: int,
                     progress: Progress, stages: dict) -> np.ndarray:
    """(centres, rotations) network values, one column per orientation of the cube."""
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
    stages["inference"] = predictor.seconds
    stages["patches"] = time.perf_counter() - t0 - predictor.seconds
    return per_rotation


def _residue_values(pred: AtomPrediction, atom_values: np.ndarray) -> np.ndarray:
    """Residue means of per-scored-atom values over the atoms ``residueAtoms`` names."""
    return reported_means(pred.atom_residue, atom_values, pred.atom_names, len(pred.residue_ids), pred.residue_atoms)


def _contrast_terms(pred: AtomPrediction, info: network.ModelInfo, prep: pp.Prepared, map_at: np.ndarray,
                    xyz: np.ndarray, weights: np.ndarray, native_res: float) -> list[tuple[np.ndarray, float]]:
    """The per-residue density contrasts the calibration gives a weight, each with its weight (fitted where the
    calibration's ``fitted_on`` / ``weights_fitted_on`` say); ``map_at``: the map's values at the scored atoms,
    ``native_res`` its resolution; records the weights and the resolution on ``pred``."""
    terms = []
    scored = pred.scored
    c_weight = float(info.calibration.get("contrast_weight", 0.0)) if pp.MODEL_CHANNEL in info.channels else 0.0
    n_weight = float(info.calibration.get("native_contrast_weight", 0.0))
    if c_weight > 0:  # + c z(contrast on the network's lattice)
        grid = prep.grid.values
        contrast = pp.density_contrast(grid[info.channels.index(pp.MAP_CHANNEL)],
                                       grid[info.channels.index(pp.MODEL_CHANNEL)],
                                       prep.centers)[prep.point_to_center[scored]]
        pred.term_values["contrast"] = _residue_values(pred, contrast)
        terms.append((pred.term_values["contrast"], c_weight))
    if n_weight > 0:  # + n z(contrast at the map's own resolution and sampling)
        pred.native_resolution = native_res
        native = pp.native_contrast(map_at, pp.rigid_density_at(xyz, weights, native_res)[scored])
        pred.term_values["native_contrast"] = _residue_values(pred, native)
        terms.append((pred.term_values["native_contrast"], n_weight))
    pred.contrast_weight, pred.native_contrast_weight = c_weight, n_weight
    return terms


def _structure_features(pred: AtomPrediction, network_means: np.ndarray, map_at: np.ndarray, native_res: float,
                        xyz: np.ndarray, elements, atom_names, residue_index) -> dict:
    """What a structure-mode run measures for its expected r (``expected.py``), from the network alone (not the
    terms: the native contrast holds the map's intensity, which the agreement compares with); keeps the residues'
    packing on ``pred`` for the SD."""
    is_ca = (np.asarray(atom_names) == "CA") & (np.asarray(elements) == "C")
    pred.residue_packing = expected.residue_packing(np.asarray(xyz)[is_ca], np.asarray(residue_index)[is_ca], xyz,
                                                    pred.residue_ids)
    return expected.structure_features(network_means, _residue_values(pred, map_at), pred.residue_packing,
                                       native_res)


def add_normal_modes(pred: AtomPrediction, ca_xyz: np.ndarray, ca_residue_index: np.ndarray,
                     weight: float = 1.0, heavy_xyz: np.ndarray | None = None) -> None:
    """Combine the residue values with the structure prior of the C-alpha atoms (:func:`normal_mode_values`); atom
    values shift with their residue so residue means stay consistent.  ValueError or MemoryError from the prior
    leave ``pred`` unchanged."""
    t0 = time.perf_counter()
    nma_vals, combined, pred.prior = normal_mode_values(pred.residue_ids, pred.residue_values, ca_xyz,
                                                        ca_residue_index, weight, heavy_xyz)
    map_vals = np.asarray(pred.residue_values, dtype=np.float64)
    pred.atom_values = pred.atom_values + (combined - map_vals)[pred.atom_residue]
    pred.map_residue_values, pred.nma_residue_values, pred.residue_values = map_vals, nma_vals, combined
    pred.stages["normal_modes"] = time.perf_counter() - t0


def normal_mode_values(residue_ids: np.ndarray, residue_values: np.ndarray, ca_xyz: np.ndarray,
                       ca_residue_index: np.ndarray, weight: float,
                       heavy_xyz: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(the structure prior per residue, NaN where it has no C-alpha; the residue values combined with it; what gave
    the prior).  The prior is the one learned from MD (``structure_prior``) when it is installed and the structure's
    heavy atoms are given, else ANM of the C-alpha atoms (nma.py says why it helps)."""
    fluct, source = structure_prior.prior_values(ca_xyz, heavy_xyz)
    pos = positions(residue_ids, ca_residue_index)
    nma_vals = np.full(len(residue_ids), np.nan)
    nma_vals[pos[pos >= 0]] = fluct[pos >= 0]
    return nma_vals, combination.combine(np.asarray(residue_values, dtype=np.float64), nma_vals, weight), source


def positions(ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Position of each query id in ``ids`` (distinct), -1 where it is not there."""
    ids, query = np.asarray(ids).reshape(-1), np.asarray(query).reshape(-1)
    if len(ids) == 0:
        return np.full(len(query), -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    i = np.clip(np.searchsorted(ids, query, sorter=order), 0, len(ids) - 1)
    return np.where(ids[order[i]] == query, order[i], -1)


def residue_sd(atom_residue: np.ndarray, atom_names: np.ndarray, n_residues: int, residue_atoms: str,
               atom_sd: np.ndarray | None = None, rotation_values: np.ndarray | None = None) -> np.ndarray:
    """Each residue's SD: from the model's variance output when it has one (mean of the residue's atom SDs, already
    calibrated); else the SD over rotations of the residue's value, so it is the spread of the number reported
    (zeros when only one orientation ran)."""
    def means(v):
        return reported_means(atom_residue, v, atom_names, n_residues, residue_atoms)
    if atom_sd is not None:
        return means(atom_sd)
    if rotation_values is None or rotation_values.shape[1] < 2:
        return np.zeros(n_residues)
    return np.stack([means(rotation_values[:, k]) for k in range(rotation_values.shape[1])], axis=1).std(axis=1)


@dataclass
class VoxelPrediction:
    """Voxel mode's values at the lattice voxels at or above the level (``prep.centers``)."""

    prep: pp.Prepared
    values: np.ndarray
    stages: dict
    map_packing_weight: float = 0.0  # weight of the contour's packing (0: not combined)
    map_intensity_weight: float = 0.0  # weight of the map's own intensity at each voxel (0: not combined)
    map_anm_weight: float = 0.0  # weight of the normal modes of the map's pseudo-atoms (0: not combined)
    pseudo_atoms: int = 0  # how many pseudo-atoms the contour gave, when normal modes were combined
    network_values: np.ndarray | None = None  # the network alone at each centre
    level: float = 0.0  # the level scored at
    level_chosen: bool = False  # True when the map chose it (map_shape.auto_level), False when it was given
    sharpness: pp.Sharpness | None = None  # the map's sharpness and the blur that matched it to the training maps'
    term_values: dict = field(default_factory=dict)  # per centre, each term combined ("packing", "normal_modes")
    run_features: dict = field(default_factory=dict)  # what the run measures for its expected r (expected.py)
    expected: expected.Expected | None = None  # the r with MD this run can expect (None: no shipped estimate)

    def lattice(self) -> np.ndarray:
        """The values on the whole model lattice (:func:`dynamics_lattice`)."""
        return dynamics_lattice(self.prep, self.values)

    def values_at(self, xyz: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """The dynamics map's values at points (trilinear), as ``measure mapvalues`` reads them from it; or those of
        other per-centre ``values`` (a term alone, the network alone) filled onto the same lattice."""
        g = self.prep.grid
        x2i, _ = pp.grid_transforms(g.origin, (g.voxel_size,) * 3)
        lattice = self.lattice() if values is None else dynamics_lattice(self.prep, values)
        return pp.map_values_at(lattice, x2i, xyz)


def dynamics_lattice(prep: pp.Prepared, values: np.ndarray) -> np.ndarray:
    """Values at the scored voxels, every other lattice voxel taking the value of the nearest scored one, so that
    sampling at the contour edge (``color sample``) reads a prediction rather than a fill value."""
    from scipy import ndimage
    shape = prep.grid.values.shape[-3:]
    scored = np.zeros(shape, dtype=bool)
    scored[tuple(prep.centers.T)] = True
    arr = np.zeros(shape, dtype=np.float32)
    arr[tuple(prep.centers.T)] = values
    nearest = ndimage.distance_transform_edt(~scored, return_distances=False, return_indices=True)
    return arr[tuple(nearest)]


def anm_weight(info: network.ModelInfo) -> float:
    """Weight of the structure prior under structure mode's normalModes (calibration, fitted on the CV; 1 for models
    without it)."""
    return float(info.calibration.get("anm_weight", 1.0))


def sharpness_slope(info: network.ModelInfo) -> float | None:
    """The spectrum slope the model's calibration blurs sharper maps down to (``preprocess.match_sharpness``; fitted
    on ATLAS MD of atlas_train by ``defmap-train md-calibrate``); None, no blur, for models without it."""
    v = info.calibration.get("sharpness_slope")
    return None if v is None else float(v)


def map_anm_weight(info: network.ModelInfo) -> float:
    """Weight of the map's own normal modes in voxel mode (calibration, fitted on the CV; 1 for models without it)."""
    return float(info.calibration.get("map_anm_weight", 1.0))


def map_packing_weight(info: network.ModelInfo) -> float:
    """Weight of the map's packing (``map_shape.map_packing``) in voxel mode (calibration, fitted on the CV; 0, i.e. the
    network alone, for models without it)."""
    return float(info.calibration.get("map_packing_weight", 0.0))


def map_intensity_weight(info: network.ModelInfo) -> float:
    """The calibration's weight of the map's own intensity at each voxel in voxel mode (fitted on ATLAS MD of
    atlas_train by ``defmap-train md-calibrate``; 0, not combined, for models without it)."""
    return float(info.calibration.get("map_intensity_weight", 0.0))


def centre_xyz(prep: pp.Prepared) -> np.ndarray:
    """The xyz (map frame) of each scored lattice voxel."""
    g = prep.grid
    return np.asarray(prep.centers, dtype=np.float64)[:, ::-1] * float(g.voxel_size) + np.asarray(g.origin, float)


def predict_voxels(predictor: network.Predictor, values: np.ndarray, xyz_to_ijk: np.ndarray, ijk_to_xyz: np.ndarray,
                   level: float | None = None, *, map_resolution: float | None = None, batch_size: int | None = None,
                   dense: bool | None = None, normal_modes: bool = False,
                   progress: Progress | None = None) -> VoxelPrediction:
    """Voxel mode on arrays: the network at lattice voxels at or above ``level``, combined with what the map's own
    shape says (there is no model to ask): how deeply the contour buries each voxel, the map's own intensity there
    (on its own grid, at its own resolution, which the network's low-passed input loses) and, with ``normal_modes``,
    the normal modes of pseudo-atoms in the contour, each at the weight the model's calibration gives. ``level`` None:
    the map chooses it (``map_shape.auto_level``). ``dense`` None picks the fastest exact method. Raises
    :class:`MapUnusable` / :class:`MapTooLarge` / :class:`TooFewPseudoAtoms`, and ``network.ModelError`` when the
    model fails or cannot run dense."""
    progress = progress or silent_progress()
    info = predictor.info
    stages: dict = {}
    progress.update(0.03, "sharpness")
    t0 = time.perf_counter()
    given = values
    values, sharp = pp.match_sharpness(values, xyz_to_ijk, float(map_resolution or info.spec.filter_resolution),
                                       sharpness_slope(info))
    stages["sharpness"] = time.perf_counter() - t0
    progress.update(0.05, "contour level")
    chosen = level is None
    if chosen:
        step = float(np.abs(np.linalg.det(np.asarray(ijk_to_xyz, dtype=np.float64).reshape(3, 4)[:, :3]))) ** (1 / 3)
        try:
            res = max(float(map_resolution or 0.0), info.spec.filter_resolution)  # what the network's input is
            scored_level, _ = map_shape.auto_level(values, step, res)
        except ValueError as e:
            raise MapUnusable(f"{e}; give 'level'") from None
        # the level reported is on the map as given, enclosing what the chosen one encloses in the blurred map
        level = pp.carried_level(values, given, scored_level) if sharp.b_factor else scored_level
    else:
        scored_level = pp.carried_level(given, values, float(level)) if sharp.b_factor else float(level)
    del given
    progress.update(0.1, "preprocessing")
    t0 = time.perf_counter()
    prep = _prepared(lambda: pp.prepare_voxels(values, xyz_to_ijk, ijk_to_xyz, info.spec, float(scored_level),
                                               map_resolution))
    stages["preprocess"] = time.perf_counter() - t0
    preds = _infer_voxels(predictor, prep, batch_size, dense, progress, stages)
    terms = []
    out = VoxelPrediction(prep, preds, stages, network_values=preds, level=float(level), level_chosen=chosen,
                          sharpness=sharp)
    n, voxel = len(prep.centers), info.spec.voxel_size
    if map_packing_weight(info):  # + k z(how deeply the contour buries each voxel)
        t0 = time.perf_counter()
        progress.update(0.9, "packing of the contour")
        out.map_packing_weight = map_packing_weight(info)
        out.term_values["packing"] = map_shape.map_packing(prep.grid.values, n, voxel, prep.centers)
        terms.append((out.term_values["packing"], out.map_packing_weight))
        stages["packing"] = time.perf_counter() - t0
    if map_intensity_weight(info):  # + w z(minus the map's own value at the voxel, on its own grid)
        out.map_intensity_weight = map_intensity_weight(info)
        out.term_values["intensity"] = -pp.map_values_at(values, xyz_to_ijk, centre_xyz(prep))
        terms.append((out.term_values["intensity"], out.map_intensity_weight))
    if normal_modes:  # + e z(normal modes of the map's own pseudo-atoms)
        t0 = time.perf_counter()
        part = progress.span(0.9, 1.0)
        part.update(0.0, "normal modes of the map")
        fluct = nma.map_elastic_network(prep.grid.values, n, voxel, prep.centers,
                                        progress=lambda f: part.update(f, "normal modes of the map"))
        if not np.isfinite(fluct).any():
            raise TooFewPseudoAtoms("too few pseudo-atoms within 15 Å of each other for normal modes")
        out.term_values["normal_modes"] = fluct
        terms.append((fluct, map_anm_weight(info)))
        stages["normal_modes"] = time.perf_counter() - t0
        out.map_anm_weight = map_anm_weight(info)
    out.values = combination.combine_terms(preds, terms)
    out.run_features = expected.voxel_features(preds, out.term_values.get("packing"),
                                               max(float(map_resolution or 0.0), info.spec.filter_resolution))
    out.expected = expected.expected("voxel", out.run_features)
    if out.map_anm_weight:
        out.pseudo_atoms = len(map_shape.map_pseudo_atoms(prep.grid.values, n, voxel))
    return out


def _infer_voxels(predictor: network.Predictor, prep: pp.Prepared, batch_size: int | None, dense: bool | None,
                  progress: Progress, stages: dict) -> np.ndarray:
    """The network at every centre voxel: shared features, dense tiles or patches (``dense`` None: the fastest)."""
    info = predictor.info
    predictor.seconds = 0.0
    t0 = time.perf_counter()
    use_dense = info.fully_convolutional if dense is None else dense
    if use_dense and not info.fully_convolutional:
        raise network.ModelError(f"Model {info.name} is not fully convolutional; use dense false")
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
    return preds
