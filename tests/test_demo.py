"""`make demo` output: a real picture with colors across the palette, a defattr and a per-residue CSV."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np

from chimerax.defmap.network import installed_models

from .conftest import TOOLS
from .helpers import shared_path


def test_demo_writes_picture_defattr_and_csv(tmp_path, random_model):
    shared_path("emdb", "emd_3488.mrc")
    cmd = [sys.executable, str(TOOLS / "demo.py"), "--out", str(tmp_path)]
    if not installed_models():
        cmd += ["--model", str(random_model)]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image
    img = np.asarray(Image.open(tmp_path / "defmap_5me2.png").convert("RGB")).astype(int)
    assert img.shape[:2] == (700, 900)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    bluish = ((b - r) > 60) & ((b - g) > 60)
    reddish = ((r - b) > 60) & ((r - g) > 60)
    assert bluish.sum() > 500 and reddish.sum() > 500, (bluish.sum(), reddish.sum())  # both ends of the palette
    rows = list(csv.DictReader(open(tmp_path / "defmap_5me2.csv")))
    assert len(rows) > 500
    vals = np.array([float(x["log10_rmsf"]) for x in rows])
    assert np.isfinite(vals).all() and vals.std() > 0
    attr = [ln for ln in open(tmp_path / "defmap_5me2.defattr") if ln.startswith("\t")]
    assert len(attr) == len(rows)
