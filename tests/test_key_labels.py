"""The color key that ``defmap`` draws keeps its labels apart and inside the picture from 400 px wide up.

The labels are measured in the key's own texture, the image ChimeraX's color-key model draws into the saved picture:
columns of label pixels under the color bar form one block per label when the labels stand apart, and fewer blocks
when two of them run together (EMD-3488's voxel key printed ``-0.220-0.0140.192`` as one block before the fix).
"""

from __future__ import annotations

import numpy as np
import pytest
from chimerax.core.commands import run

from .helpers import shared_path

SIZES = [(400, 300), (700, 600), (1200, 900)]


def label_blocks(key, min_gap_px: float) -> list[tuple[int, int]]:
    """Column ranges [start, stop) of label ink under the bar of a horizontal key (texture as last rendered)."""
    rgba = key._key_image_rgba()  # rows bottom-up; uses the window size and pixel scale of the last render
    border = key.border_width if key.border else 0
    strip = rgba[:max(int(key.end_offset[1]) - border, 1)]  # below the bar: labels (right/bottom side)
    ink = (strip[..., 3] > 40).any(axis=0)
    cols = np.flatnonzero(ink)
    if len(cols) == 0:
        return []
    blocks, start = [], cols[0]
    for a, b in zip(cols[:-1], cols[1:]):
        if b - a > min_gap_px:  # a gap wider than letters leave inside a number ends a label
            blocks.append((int(start), int(a) + 1))
            start = b
    blocks.append((int(start), int(cols[-1]) + 1))
    return blocks


def check_key(session, tmp_path, tag: str, sizes=SIZES) -> list[str]:
    from chimerax.color_key.model import get_model
    key = get_model(session, create=False)
    assert key is not None and key.display
    labels = [t for _, t in key.rgbas_and_labels if t]
    assert 2 <= len(labels) <= 3, labels
    assert all(len(t.split(".")[-1]) <= 3 for t in labels), labels  # no three-decimal clutter like -0.220
    report = []
    for w, h in sizes:
        run(session, f"save {tmp_path / f'{tag}_{w}.png'} width {w} height {h} supersample 1", log=False)
        em = key.font_size * key._texture_pixel_scale * 96 / 72  # font height in texture pixels
        blocks = label_blocks(key, min_gap_px=0.3 * em)
        assert len(blocks) == len(labels), (tag, w, labels, blocks)
        gaps = [b[0] - a[1] for a, b in zip(blocks[:-1], blocks[1:])]
        assert min(gaps) >= 0.5 * em, (tag, w, gaps, em)
        # the texture (bar and labels) lies inside the picture
        tex_h, tex_w = key._key_image_rgba().shape[:2]
        left = key.pos[0] * w - key.start_offset[0]
        bottom = key.pos[1] * h - key.end_offset[1]
        assert left >= 0 and left + tex_w <= w + 1 and bottom >= 0 and bottom + tex_h <= h, (tag, w, left, bottom)
        report.append(f"{tag} {w}x{h}: labels {labels} font {key.font_size} pt, gaps {gaps} px (em {em:.0f} px)")
    return report


def test_voxel_and_structure_mode_keys_are_readable_from_400_px(cx, tmp_path):
    if not cx.ui.has_graphics:
        pytest.skip("offscreen rendering (OSMesa) is unavailable")
    emd = shared_path("emdb", "emd_3488.mrc")
    pdb = shared_path("emdb", "5me2.pdb")
    run(cx, f"open {emd}", log=False)
    run(cx, "defmap #1")  # voxel mode: the surface colored by the dynamics map, with a key
    report = check_key(cx, tmp_path, "voxel")
    run(cx, "close", log=False)
    run(cx, f"open {emd}", log=False)
    s = run(cx, f"open {pdb}", log=False)[0]
    run(cx, f"defmap #1 structure #{s.id_string}")
    report += check_key(cx, tmp_path, "structure")
    # compare: diverging key centred on 0 (the narrowest window is the hardest case)
    second = run(cx, f"open {emd}", log=False)[0]
    run(cx, f"defmap compare #1,{second.id_string} structure #{s.id_string}")
    report += check_key(cx, tmp_path, "compare", sizes=SIZES[:1])
    print("\n".join(report))


def test_label_texts_use_two_significant_digits_of_the_range():
    from chimerax.defmap.keylabels import label_texts
    assert label_texts(-0.2203, 0.1924) == ["-0.22", "-0.01", "0.19"]
    assert label_texts(-0.004, 0.004) == ["-0.0040", "0.0000", "0.0040"]
    assert label_texts(-2.5, 12.5) == ["-2", "5", "12"]
    assert label_texts(-0.84, 0.33) == ["-0.84", "-0.26", "0.33"]  # not "0.3": ChimeraX's key clipped it
    assert label_texts(1.0, 1.0) == ["1.00", "1.00", "1.00"]
