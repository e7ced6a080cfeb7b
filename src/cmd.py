"""The ``defmap`` command: parse and check its arguments, run the prediction (``predict.py``), store, color and log it.

The computation is in ``recipe.py`` (from plain arrays) behind ``predict.py`` (from ChimeraX objects); attributes,
colors and the dynamics map are written by ``attributes.py``; files by ``export.py``.
"""

from __future__ import annotations

import time
from html import escape

import numpy as np
from chimerax.core.commands import BoolArg, CmdDesc, ColormapRangeArg, EnumOf, FloatArg, SaveFileNameArg, StringArg
from chimerax.core.errors import UserError

from . import attributes, export, map_shape
from .args import BatchSizeArg, MapResolutionArg, PaletteArg
from .predict import (
    RESIDUE_ATOMS_DEFAULT,
    StructureResult,
    VoxelResult,
    add_md_units,
    add_normal_modes,
    add_uncertainty,
    predict_structure,
    predict_voxels,
)
from .progress import Progress
from .recipe import anm_weight
from .residues import RESIDUE_ATOMS
from .rotations import ROTATIONS


def defmap(session, map, structure=None, model=None, map_resolution=None, device="auto", color=True,
           palette=None, range=None, key=True, attribute="defmap", batch_size=None, level=None, dense=None,
           return_json=False, uncertainty=False, profile=None, save_csv=None, save_structure=None,
           bfactor="value", normal_modes=False, residue_atoms=RESIDUE_ATOMS_DEFAULT):
    """Predict residue dynamics (log10 RMSF, Å) of a fitted model from a cryo-EM map, or per voxel without one."""
    outputs = {"uncertainty": uncertainty, "profile": profile, "saveCsv": save_csv, "saveStructure": save_structure}
    if structure is None and any(outputs.values()):
        raise UserError(f"{', '.join(k for k, v in outputs.items() if v)} need a structure ('structure ATOMS')")
    attributes.check_attribute_name(attribute)
    vols = list(map) if isinstance(map, (list, tuple)) else [map]
    if len(vols) != 1:
        raise UserError(f"defmap needs exactly one map, got {len(vols)}")
    prediction = dict(model=model, map_resolution=map_resolution, device=device, batch_size=batch_size)
    coloring = dict(color=color, palette=palette, range=range, key=key)
    if structure is not None:
        if len(structure) == 0:
            raise UserError("The structure specification matches no atoms")
        result = _structure_mode(session, vols[0], structure, prediction, coloring, attribute=attribute,
                                 uncertainty=uncertainty, normal_modes=normal_modes, residue_atoms=residue_atoms,
                                 files=dict(profile=profile, save_csv=save_csv, save_structure=save_structure,
                                            bfactor=bfactor))
    else:
        result = _voxel_mode(session, vols[0], prediction, coloring, level=level, dense=dense,
                             normal_modes=normal_modes)
    if not return_json:
        return result
    from chimerax.core.commands import ArrayJSONEncoder, JSONResult
    return JSONResult(ArrayJSONEncoder().encode(result.as_dict()), result)


def _structure_mode(session, volume, structure, prediction: dict, coloring: dict, *, attribute: str,
                    uncertainty: bool, normal_modes: bool, residue_atoms: str, files: dict) -> StructureResult:
    s = structure.unique_structures
    progress = Progress(session, f"DEFMap {s[0]}" if s else "DEFMap")
    result = predict_structure(session, volume, structure, attribute=attribute,
                               rotations=len(ROTATIONS) if uncertainty else 1,
                               progress=progress.span(0.0, 0.85 if normal_modes else 0.9),
                               residue_atoms=residue_atoms, **prediction)
    if normal_modes:
        progress.update(0.85, "normal modes")
        add_normal_modes(result)
    add_md_units(result)
    progress.update(0.9, "storing and coloring")
    t0 = time.perf_counter()
    attributes.store_attributes(session, result)
    if uncertainty:
        add_uncertainty(result)
        attributes.store_uncertainty(session, result)
    result.stages["mapping"] += time.perf_counter() - t0
    if coloring["color"]:
        t0 = time.perf_counter()
        attributes.color_structure(session, result, coloring["palette"], coloring["range"], coloring["key"])
        result.stages["coloring"] = time.perf_counter() - t0
    log_structure_summary(session, result)
    progress.update(0.95, "writing outputs")
    export.write_outputs(session, result, **files)
    progress.done(f"DEFMap finished: {len(result.residues):,} residues of {result.structure} scored in "
                  f"{result.seconds:.1f} s on {result.provider}")
    return result


def _prior_text(prior: str) -> str:
    """How the log names the structure prior ``normalModes`` combined."""
    if prior == "learned prior":
        return ("structure prior learned from ATLAS MD (ANM, packing, exposure, chain ends; MD of single chains, so at "
                "a complex's interfaces it expects more motion than the complex has)")
    return "ANM (C-alpha, 15 Å)"


def _voxel_mode(session, volume, prediction: dict, coloring: dict, *, level, dense, normal_modes) -> VoxelResult:
    t_start = time.perf_counter()
    progress = Progress(session, f"DEFMap voxel mode {volume.name}")
    res = predict_voxels(session, volume, level=level, dense=dense, progress=progress.span(0.0, 0.85),
                         normal_modes=normal_modes, **prediction)
    progress.update(0.85, "dynamics map")
    t0 = time.perf_counter()
    res.dynamics = attributes.make_dynamics_volume(session, volume, res.prep, res.values,
                                                   f"{volume.name} DEFMap dynamics")
    res.stages["mapping"] = time.perf_counter() - t0
    if coloring["color"] and attributes.surfaces_to_color(session, volume, res.dynamics):
        progress.update(0.95, "coloring")
        t0 = time.perf_counter()
        attributes.color_map_surfaces(session, volume, res.dynamics, coloring["palette"], coloring["range"],
                                      coloring["key"])
        res.stages["coloring"] = time.perf_counter() - t0
    res.seconds = time.perf_counter() - t_start
    log_voxel_summary(session, res)
    progress.done(f"DEFMap voxel mode finished: {res.voxels:,} voxels of {volume.name} scored in "
                  f"{res.seconds:.1f} s; dynamics map #{res.dynamics.id_string}")
    return res


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
    """One HTML table in the log: model, timing, what was combined, the value range and the extreme stretches."""
    rv = result.residue_values
    flex, rigid = _stretches(result)

    def fmt(stretch):
        return ", ".join(f"/{c}:{a.number}-{b.number} ({m:.2f})" for m, c, a, b in stretch) or "—"
    rows = [("Model", f"{escape(result.model.name)} ({result.model.resolution:g} Å)"),
            ("Provider", escape(result.provider)),
            *([("Density contrast", f"network combined with the fitted model's density minus the map's at each atom "
                f"(z-scores, weight {result.contrast_weight:g} fitted on {result.model.fitted_where()})")]
              if result.contrast_weight > 0 else []),
            *([("Contrast at map resolution", f"network combined with a rigid model's density minus the map's at each "
                f"atom, at {result.native_resolution:g} Å on the map's own grid (z-scores, weight "
                f"{result.native_contrast_weight:g} fitted on {result.model.fitted_where('weights_fitted_on')})")]
              if result.native_contrast_weight > 0 else []),
            *([("Uncertainty", f"<i>{result.attribute}_sd</i>: {escape(result.sd_source)}")]
              if result.residue_sd is not None else []),
            ("Map sharpness", sharpness_text(result.sharpness)),
            ("Time", f"{result.seconds:.2f} s ({result.patches:,} patches)"),
            *([("Normal modes", f"map prediction combined with the {_prior_text(result.prior)} of "
                f"{np.isfinite(result.nma_residue_values).sum():,} C-alpha atoms: z(map) + "
                f"{anm_weight(result.model):g} z(prior), the weight fitted on the CV "
                f"(attributes <i>{result.attribute}_map</i>, <i>{result.attribute}_nma</i>; the expected r below is "
                "the map prediction's)")]
              if result.nma_residue_values is not None else []),
            ("Residues scored", f"{len(rv):,} of {result.structure.num_residues:,}"),
            ("Atoms outside map", f"{result.outside_atoms:,}"),
            ("Units", _units_text(result.md_units)),
            ("log10 RMSF (Å) min / median / max", f"{rv.min():.3f} / {np.median(rv):.3f} / {rv.max():.3f}"),
            ("Most flexible stretches", fmt(flex)),
            ("Most rigid stretches", fmt(rigid))]
    html = (f"<table border=1 cellpadding=4 style='border-collapse:collapse'><caption>DEFMap dynamics of "
            f"{escape(str(result.structure))}: residue attributes <i>{result.attribute}</i>, "
            f"<i>{result.attribute}_z</i></caption>"
            + "".join(f"<tr><th align=left>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    session.logger.info(html, is_html=True)
    session.logger.info(expected_line(result.expected, "the map's intensity and the model's packing, the resolution "
                                      f"and the size; attribute {result.attribute}_expected_r of {result.structure}"))
    session.logger.info(misfit_line(result))
    if result.outside_atoms:
        session.logger.warning(f"{result.outside_atoms:,} heavy atoms of {result.structure} lie outside map and got "
                               "no DEFMap value")


def _units_text(aff) -> str:
    """What the values mean: MD units (``md_units.py``) or, without the calibration, the network's own scale."""
    from .md_units import MD
    if aff is None:
        return "the network's training labels (not calibrated to MD; defmap_z is the scale-free ranking)"
    return (f"log10 C-alpha RMSF (Å) as {escape(MD)} would give it: mean {aff.level:.2f} from the structure's packing"
            + (" (outside the calibration's range, extrapolated)" if aff.clamped else "")
            + "; for a complex, each chain as if alone, so interfaces read more flexible than they are")


def log_voxel_summary(session, res: VoxelResult) -> None:
    """One line in the log: voxels, model, what the map's shape added, the value range and the dynamics map."""
    enclosed = res.voxels * res.model.spec.voxel_size ** 3  # Å^3 at or above the level
    shape = [f"its packing in the contour (weight {res.map_packing_weight:g})"] if res.map_packing_weight else []
    if res.map_intensity_weight:
        shape.append(f"the map's own intensity at each voxel (weight {res.map_intensity_weight:g})")
    if res.map_anm_weight:
        shape.append(f"normal modes of {res.pseudo_atoms:,} pseudo-atoms in the contour "
                     f"(weight {res.map_anm_weight:g})")
    modes = "" if not shape else f", combined with {' and '.join(shape)}"
    how = ("chosen from the map: the low-passed map's Otsu threshold; give 'level' to set it" if res.level_chosen
           else "given")
    preds = res.values
    session.logger.info(
        f"DEFMap voxel mode on {res.volume.name} (level {res.level:.4g}, {how}; it encloses {enclosed:,.0f} Å³, the "
        f"volume of about {enclosed / map_shape.RESIDUE_VOLUME:,.0f} residues): {res.voxels:,} voxels scored with "
        f"{res.model.name} on {res.provider} in {res.seconds:.2f} s{modes}; log10 RMSF min / median / max "
        f"{preds.min():.3f} / {float(np.median(preds)):.3f} / {preds.max():.3f}; "
        f"dynamics map #{res.dynamics.id_string}; map sharpness: {sharpness_text(res.sharpness)}")
    session.logger.info(expected_line(res.expected, "the contour's packing, how far the contour stands out of the "
                                      "map's background, the resolution and the size; expected_r in the JSON result"))


def sharpness_text(sh) -> str:
    """What was done about the map's sharpness (``preprocess.match_sharpness``), for the log."""
    if sh is None or sh.target is None:
        return "read as given (this model asks for no sharpness)"
    slope = "unmeasured" if not np.isfinite(sh.slope) else f"{sh.slope:.0f}"
    if not sh.b_factor:
        return (f"read as given: its spectrum slope {slope} is no sharper than the training maps' "
                f"{sh.target:g}")
    return (f"blurred by B = {sh.b_factor:.0f} Å² before scoring: its spectrum slope {slope} is sharper than the "
            f"training maps' {sh.target:g}, which the networks misread (the map itself is unchanged)")


def misfit_line(result: StructureResult) -> str:
    """The log's one line on where map and model disagree (``misfit.py``): stretches outside the map's contour and
    density the model does not explain, where the dynamics value should be read with care."""
    from .misfit import LOW_FIT, MIN_BLOB
    m = result.misfit
    if m is None:
        return "DEFMap map–model fit: not assessed (the map has no contour to compare the model with)"
    residues = result.structure.residues

    def spec(ids) -> str:
        rs = residues[np.asarray(ids, dtype=np.int64)]
        return f"/{rs[0].chain_id}:{rs[0].number}-{rs[-1].number}" if len(rs) > 1 else rs[0].string(
            style="command", omit_structure=True)
    low = m.low_stretches()
    parts = [f"model outside the map's contour (residue attribute {result.attribute}_fit < {LOW_FIT:g}) at "
             + ", ".join(spec(ids) for ids in low)] if low else []
    if m.blobs:
        parts.append("density the model does not explain: " + "; ".join(
            f"{b.volume:,.0f} Å³ lined by {_residue_list(residues[np.asarray(b.residues, dtype=np.int64)])}"
            for b in m.blobs[:5]) + (f" (and {len(m.blobs) - 5} more)" if len(m.blobs) > 5 else ""))
    if not parts:
        return (f"DEFMap map–model fit: every stretch lies inside the map's contour and no density of "
                f"{MIN_BLOB:g} Å³ or more is left unexplained (attribute {result.attribute}_fit)")
    return "DEFMap map–model fit: " + "; ".join(parts) + "; read the dynamics there with care"


def _residue_list(residues, most: int = 10) -> str:
    """'/A:31,38,41 /B:7' for the log, at most ``most`` residues."""
    by_chain: dict[str, list[str]] = {}
    for r in list(residues)[:most]:
        by_chain.setdefault(r.chain_id, []).append(f"{r.number}{r.insertion_code}")
    return " ".join(f"/{c}:{','.join(n)}" for c, n in by_chain.items()) + ("…" if len(residues) > most else "")


def expected_line(e, basis: str) -> str:
    """The log's one line on how far to trust the run (``expected.py``); ``basis``: what it was estimated from."""
    if e is None:
        return "DEFMap expected agreement with MD: not estimated (the bundle's expected_r.json is missing)"
    return (f"DEFMap expected agreement with MD: {e.line()} per-residue Pearson r (68 % range), from how the "
            f"network agrees with {basis}; fitted on engine maps of ATLAS MD chains, see the help page")


def defmap_desc():
    from chimerax.atomic import AtomsArg
    from chimerax.map import MapsArg
    return CmdDesc(
        required=[("map", MapsArg)],
        keyword=[("structure", AtomsArg), ("model", StringArg), ("map_resolution", MapResolutionArg),
                 ("device", EnumOf(("auto", "gpu", "cpu"))), ("color", BoolArg), ("palette", PaletteArg),
                 ("range", ColormapRangeArg), ("key", BoolArg), ("attribute", StringArg), ("batch_size", BatchSizeArg),
                 ("level", FloatArg), ("dense", BoolArg), ("uncertainty", BoolArg),
                 ("profile", SaveFileNameArg), ("save_csv", SaveFileNameArg), ("save_structure", SaveFileNameArg),
                 ("bfactor", EnumOf(("value", "z"))), ("normal_modes", BoolArg),
                 ("residue_atoms", EnumOf(RESIDUE_ATOMS))],
        synopsis="predict protein dynamics (log10 RMSF) from a cryo-EM map")
