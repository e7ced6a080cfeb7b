"""Argument types the ``defmap`` commands share: ranges as ChimeraX ``Bounded`` arguments, and a palette argument
with a one-line error."""

from __future__ import annotations

import math

from chimerax.core.commands import AnnotationError, Bounded, ColormapArg, FloatArg, IntArg, next_token
from chimerax.core.errors import UserError

from .palette import DEFAULT_PALETTE
from .predict import BATCH_SIZE_RANGE, MAP_RESOLUTION_RANGE


class FiniteFloatArg(FloatArg):
    """A number that is not NaN or infinite: ``Bounded`` alone lets NaN through (every comparison with it is
    false)."""

    name = "a finite number"

    @staticmethod
    def parse(text, session):
        value, token, rest = FloatArg.parse(text, session)
        if not math.isfinite(value):
            raise AnnotationError(f"Expected a finite number, not {token}")
        return value, token, rest


MapResolutionArg = Bounded(FiniteFloatArg, *MAP_RESOLUTION_RANGE, inclusive=False,
                           name=f"a resolution > {MAP_RESOLUTION_RANGE[0]:g} and < {MAP_RESOLUTION_RANGE[1]:g} (Å)")
BatchSizeArg = Bounded(IntArg, *BATCH_SIZE_RANGE, name=f"an integer from {BATCH_SIZE_RANGE[0]:,} to "
                       f"{BATCH_SIZE_RANGE[1]:,}")
MAX_DISTANCE = 50  # Å: defmap compare's binding site
DistanceArg = Bounded(Bounded(FiniteFloatArg, min=0, inclusive=False), max=MAX_DISTANCE,
                      name=f"a distance > 0 and <= {MAX_DISTANCE:g} (Å)")


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
