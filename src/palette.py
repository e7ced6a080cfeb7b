"""The colors ``defmap`` uses unless told otherwise."""

from __future__ import annotations

DEFAULT_PALETTE = "blue-white-red"  # rigid blue, flexible red


def default_palette(session=None):
    """The palette ``defmap`` colors with unless told otherwise."""
    from chimerax.core.colors import BuiltinColormaps
    return BuiltinColormaps[DEFAULT_PALETTE]


def no_value_color():
    """Grey for residues without a value (ligands outside the map, unscored atoms)."""
    from chimerax.core.colors import Color
    return Color((0.6, 0.6, 0.6, 1.0))
