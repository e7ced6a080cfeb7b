"""Writing a prediction into the session: atom and residue attributes (registered, so sessions and ``save .defattr``
keep them), colors by them, and voxel mode's dynamics map and surface coloring."""

from __future__ import annotations

import numpy as np
from chimerax.core.errors import UserError

from . import recipe
from .combination import zscore
from .keylabels import tidy_key
from .palette import default_palette, no_value_color

SUFFIXES = ("", "_z", "_sd", "_map", "_nma")  # every attribute one run can write: name + suffix


def check_attribute_name(attribute: str) -> None:
    """Refuse names that are no Python identifier, or that would overwrite built-in atom/residue attributes
    (``coord``, ``name``, ...) with any of the suffixes a run writes."""
    from chimerax.atomic import Atom, Residue
    if not attribute.isidentifier():
        raise UserError(f"attribute name '{attribute}' must be a Python identifier (letters, digits, _)")
    for name in (attribute + s for s in SUFFIXES):
        if name.startswith("_") or any(hasattr(cls, name) for cls in (Atom, Residue)):
            raise UserError(f"attribute name '{attribute}' clashes with the built-in atom or residue attribute "
                            f"'{name}'; choose another name")


def register_attributes(session, attribute: str) -> None:
    from chimerax.atomic import Atom, Residue
    Atom.register_attr(session, attribute, "DEFMap", attr_type=float, can_return_none=True)
    Residue.register_attr(session, attribute, "DEFMap", attr_type=float, can_return_none=True)
    Residue.register_attr(session, attribute + "_z", "DEFMap", attr_type=float, can_return_none=True)


def _residue_attribute(session, structure, name: str, residues, values) -> None:
    """Register residue attribute ``name`` and set it: None on every residue of the structure, then the values (NaN
    becomes None)."""
    from chimerax.atomic import Residue
    Residue.register_attr(session, name, "DEFMap", attr_type=float, can_return_none=True)
    for r in structure.residues:
        setattr(r, name, None)
    for r, v in zip(residues, values):
        setattr(r, name, None if np.isnan(v) else float(v))


def store_attributes(session, result) -> None:
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
        for suffix, vals in (("_map", result.map_residue_values), ("_nma", result.nma_residue_values)):
            _residue_attribute(session, s, name + suffix, result.residues, vals)
    rv = result.residue_values
    for r, v, zv in zip(result.residues, rv, zscore(rv)):
        setattr(r, name, float(v))
        setattr(r, name + "_z", float(zv))
    store_expected(session, s, name, result.expected)
    if result.misfit is not None:
        _residue_attribute(session, s, name + "_fit", result.residues, result.misfit.fit)


def store_expected(session, structure, name: str, e) -> None:
    """Structure attributes ``<name>_expected_r``, ``_low`` and ``_high`` (``expected.Expected``; None without the
    shipped fit), registered so that sessions keep them."""
    from chimerax.atomic import Structure
    for suffix, v in (("", None if e is None else e.r), ("_low", None if e is None else e.low),
                      ("_high", None if e is None else e.high)):
        Structure.register_attr(session, f"{name}_expected_r{suffix}", "DEFMap", attr_type=float,
                                can_return_none=True)
        setattr(structure, f"{name}_expected_r{suffix}", v)


def store_uncertainty(session, result) -> None:
    """Residue attribute ``<attribute>_sd`` from ``result.residue_sd`` (``predict.add_uncertainty``), None where no
    value."""
    name = result.attribute + "_sd"
    from chimerax.atomic import Residue
    Residue.register_attr(session, name, "DEFMap", attr_type=float, can_return_none=True)
    for r in result.structure.residues:
        setattr(r, name, None)
    for r, sd in zip(result.residues, result.residue_sd):
        setattr(r, name, float(sd))


def color_structure(session, result, palette=None, range=None, key=True) -> None:
    """Ribbons, atoms, rings and molecular surfaces by the residue attribute, like ``color byattribute``."""
    from chimerax.std_commands.color import color_by_attr
    if palette is None:
        palette = default_palette(session)
    atoms = result.structure.atoms
    color_by_attr(session, "r:" + result.attribute, atoms=atoms, palette=palette, range=range,
                  no_value_color=no_value_color(), key=key, log_info=False, undo_name="defmap")
    if key:
        tidy_key(session)


def make_dynamics_volume(session, volume, prep, preds: np.ndarray, name: str):
    """A new map on the model lattice holding predictions at scored voxels (``recipe.dynamics_lattice``)."""
    from chimerax.map import Volume, volume_from_grid_data
    from chimerax.map_data import ArrayGridData
    earlier = [m for m in session.models.list(type=Volume) if m.name == name and m is not volume]
    if earlier:  # a repeated run replaces its dynamics map instead of piling up copies
        session.models.close(earlier)
    g = prep.grid
    grid = ArrayGridData(recipe.dynamics_lattice(prep, preds), origin=tuple(g.origin), step=(g.voxel_size,) * 3,
                         name=name)
    v = volume_from_grid_data(grid, session, style="surface", show_dialog=False)
    v.scene_position = volume.scene_position
    v.display = False
    return v


def surfaces_to_color(session, volume, dynamics) -> bool:
    """Whether the map shows contour surfaces to color; warns, naming the command that would color them, when not."""
    if volume.display and not volume.surfaces:
        # contour surfaces are computed at the next redraw; a script (open MAP; defmap #1) gets there first
        volume.update_drawings()
    if not volume.surfaces:
        session.logger.warning(f"Map {volume.name} has no surface to color; show it as a surface and run "
                               f"'color sample #{volume.id_string} map #{dynamics.id_string}'")
        return False
    return True


def color_map_surfaces(session, volume, dynamics, palette=None, range=None, key=True) -> None:
    """Color the map's contour surfaces by sampling the dynamics map, like ``color sample``."""
    from chimerax.surface.colorvol import color_sample
    color_sample(session, volume.surfaces, dynamics, palette=palette or default_palette(session),
                 range=range or "full", key=key)
    if key:
        tidy_key(session)
