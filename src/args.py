"""Argument types the ``defmap`` commands share: a palette argument with a one-line error."""

from __future__ import annotations

from chimerax.core.commands import AnnotationError, ColormapArg, next_token
from chimerax.core.errors import UserError

from .palette import DEFAULT_PALETTE


class PaletteArg(ColormapArg):
    """ChimeraX's palette argument with a one-line error for unknown palettes."""

    @staticmethod
    def parse(text, session):
        try:
            return ColormapArg.parse(text, session)
        except (UserError, ValueError):
            token = next_token(text)[0] if text.strip() else text
            raise AnnotationError(f"'{token}' is not a known palette or color list; give a palette name such as "
                                  f"{DEFAULT_PALETTE} or colors like blue:white:red") from None
