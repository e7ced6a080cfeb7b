"""Readable color keys after ``defmap`` colors something.

``color byattribute ... key true`` and ``color sample ... key true`` label every palette value with three decimals in
ChimeraX's default 24-point font on a key a quarter of the window wide, so on a 700-pixel image three labels such as
``-0.220 -0.014 0.192`` print on top of each other.  :func:`tidy_key` keeps the colors but relabels the key with at
most three evenly spaced values at a precision suited to the range, in a font size chosen so that neighbouring labels
stay apart on any window at least ``DESIGN_WIDTH`` pixels wide (the key scales with the window, the font does not).
"""

from __future__ import annotations

import math

import numpy as np

DESIGN_WIDTH = 400  # px: labels fit on windows (and saved images) this wide and wider
DESIGN_HEIGHT = 300  # px: ... and this high (4:3), so the labels under the key stay inside the picture
KEY_SIZE = (0.35, 0.04)  # fraction of the window: long enough for three labels at a readable size
KEY_X = 0.58  # left end of the key; leaves room right of the key for half of the last label
SAMPLES = 21  # color samples along the key: the palette's shape survives even spacing
MAX_FONT, MIN_FONT = 24, 9  # points (ChimeraX's default key font is 24)
GAP_EM = 1.0  # clear space between neighbouring labels, in font heights
_CHIMERAX_DEFAULT_PLACEMENT = ((0.25, 0.05), (0.7, 0.08))  # ColorKeyModel's size and pos before anyone moved it


def label_texts(lo: float, hi: float, n: int = 3) -> list[str]:
    """``n`` evenly spaced values from lo to hi, with two significant digits of the range (``-0.22 -0.01 0.19``) and,
    for ranges below 10, at least two decimals: ChimeraX's key sizes its margin for the last label from the text's
    ink box, which clipped a short last label such as ``0.3`` on saved images (seen in the demo picture)."""
    span = abs(hi - lo)
    least = 2 if span < 10 else 0
    decimals = 2 if span == 0 or not math.isfinite(span) else min(max(least, 1 - math.floor(math.log10(span))), 6)
    out = []
    for v in np.linspace(lo, hi, n):
        t = f"{v:.{decimals}f}"
        out.append(t[1:] if t.startswith("-") and float(t) == 0 else t)  # no "-0.00"
    return out


def _text_width(text: str, font: str, points: int) -> float:
    """Pixel width of a label as the key model lays it out (Qt font metrics; a 0.6 em estimate without Qt)."""
    try:
        from Qt.QtGui import QFont, QFontMetrics, QGuiApplication
        if QGuiApplication.instance() is None:  # no Qt application (plain --nogui): fonts cannot be measured
            raise ImportError
        fm = QFontMetrics(QFont(font, points))
        r = fm.boundingRect(text)
        return float(r.width() - r.x())
    except ImportError:
        return 0.6 * points * 96 / 72 * len(text)


def _fits(texts: list[str], positions: list[float], widths: list[float], gap: float, right_room: float) -> bool:
    """Neighbouring label boxes (centred on their positions) keep ``gap`` apart and the last one ends in the room."""
    for i in range(len(texts) - 1):
        if positions[i] + widths[i] / 2 + gap > positions[i + 1] - widths[i + 1] / 2:
            return False
    return widths[-1] / 2 <= right_room


def choose_labels(lo: float, hi: float, font: str, length_px: float, right_room_px: float) -> tuple[list[str], int]:
    """Labels and the largest font (points) at which they fit on a key ``length_px`` long; three labels if they
    fit at the smallest font, else the two ends."""
    for n in (3, 2):
        texts = label_texts(lo, hi, n)
        positions = list(np.linspace(0.0, length_px, n))
        for points in range(MAX_FONT, MIN_FONT - 1, -1):
            widths = [_text_width(t, font, points) for t in texts]
            if _fits(texts, positions, widths, GAP_EM * points * 96 / 72, right_room_px):
                return texts, points
    return label_texts(lo, hi, 2), MIN_FONT


def tidy_key(session, design_width: int = DESIGN_WIDTH) -> bool:
    """Relabel the color key ChimeraX just made (same colors) so its labels are readable; False if there is no
    numeric key to tidy.  A key the user has moved or resized keeps its place."""
    from chimerax.color_key.model import get_model
    key = get_model(session, create=False)
    if key is None:
        return False
    try:
        values = [float(label) for _, label in key.rgbas_and_labels]
    except (TypeError, ValueError):  # a key with words for labels is someone else's
        return False
    if len(values) < 2 or not all(math.isfinite(v) for v in values) or values[0] == values[-1]:
        return False
    from chimerax.core.colors import Colormap
    rgbas = np.array([rgba for rgba, _ in key.rgbas_and_labels], dtype=np.float32)
    order = np.argsort(values, kind="stable")
    cmap = Colormap(np.asarray(values)[order], rgbas[order])
    lo, hi = values[0], values[-1]  # keep the key's direction
    ours = (tuple(key.size), tuple(key.pos)) in (_CHIMERAX_DEFAULT_PLACEMENT, getattr(key, "_defmap_placement", None))
    size, pos = (KEY_SIZE, (KEY_X, 0.0)) if ours else (tuple(key.size), tuple(key.pos))
    length = size[0] * design_width
    right_room = max((1.0 - pos[0] - size[0]) * design_width - 2, 0.0)
    texts, points = choose_labels(lo, hi, key.font, length, right_room)
    if ours:  # lift the key by its label height (font, descender, tick room) plus a margin
        label_px = 1.35 * points * 96 / 72 + key.label_offset + 5 + 2 * key.border_width
        pos = (KEY_X, round((label_px + 8) / DESIGN_HEIGHT, 3))
        key.size, key.pos = size, pos
        key._defmap_placement = (size, pos)
    samples = np.linspace(lo, hi, SAMPLES)
    colors = cmap.interpolated_rgba(samples)
    at = {round(i * (SAMPLES - 1) / (len(texts) - 1)): t for i, t in enumerate(texts)}
    key.rgbas_and_labels = [(tuple(float(c) for c in colors[i]), at.get(i, "")) for i in range(SAMPLES)]
    key.numeric_label_spacing = key.NLS_EQUAL  # samples are evenly spaced; blank labels mean equal spacing anyway
    key.font_size = points
    return True
