"""Per-residue dynamics profiles (DEFMap Fig 5A style) with a test-time-augmentation uncertainty band.

The band is each residue's SD (``recipe.residue_sd``): from the model's variance output, or from predicting every patch
in all 24 orientations of the cube (a CNN trained with rotation augmentation should give the same answer in each, so
the spread across orientations shows where the prediction is unstable).  This module only draws; the SD is computed
by ``predict.add_uncertainty`` and stored by ``attributes.store_uncertainty``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def profile_data(residues, values: np.ndarray, sd: np.ndarray | None = None) -> dict[str, dict]:
    """Per chain: residue numbers (sorted), values and SD, as plotted (also what tests and JSON read)."""
    out: dict[str, dict] = {}
    chains = np.array([r.chain_id for r in residues])
    numbers = np.array([r.number for r in residues])
    polymer = np.array([r.polymer_type != 0 for r in residues], dtype=bool)
    for c in dict.fromkeys(chains):
        sel = (chains == c) & polymer
        if not sel.any():
            continue
        order = np.argsort(numbers[sel], kind="stable")
        d = {"number": numbers[sel][order].tolist(), "value": np.asarray(values)[sel][order].tolist()}
        if sd is not None:
            d["sd"] = np.asarray(sd)[sel][order].tolist()
        out[str(c)] = d
    return out


def plot_profile(data: dict[str, dict], path: str | Path, title: str = "", ylabel: str = "predicted log10 RMSF (Å)",
                 zero_line: bool = False) -> bytes:
    """One panel per chain: value against residue number, shaded mean ± SD when SD is known; returns PNG bytes."""
    # a bare Figure with its own Agg canvas: pyplot and matplotlib.use() would change the user's backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    n = max(len(data), 1)
    fig = Figure(figsize=(8.0, 1.9 * n + 0.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, sharey=True, squeeze=False)[:, 0]
    for ax, (chain, d) in zip(axes, data.items()):
        x = np.array(d["number"], dtype=float)
        y = np.array(d["value"], dtype=float)
        # break the line at gaps in numbering so missing loops are not drawn as straight segments
        gaps = np.flatnonzero(np.diff(x) > 1) + 1
        for xs, ys, sds in zip(np.split(x, gaps), np.split(y, gaps),
                               np.split(np.array(d["sd"]), gaps) if "sd" in d else [None] * (len(gaps) + 1)):
            if sds is not None:
                ax.fill_between(xs, ys - sds, ys + sds, color="tab:red", alpha=0.25, linewidth=0)
            ax.plot(xs, ys, color="tab:red" if not zero_line else "k", linewidth=1.0)
        if zero_line:
            ax.axhline(0, color="0.5", linewidth=0.6)
        ax.set_ylabel(f"chain {chain}")
        ax.margins(x=0.01)
    axes[-1].set_xlabel("residue number")
    fig.supylabel(ylabel, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = buf.getvalue()
    Path(path).write_bytes(png)
    return png


def log_image(session, png: bytes, caption: str, width: int = 640) -> None:
    """Show a PNG in the log as an image (the GUI log shows it; a --nogui log prints the caption, not base64)."""
    from PIL import Image
    image = Image.open(io.BytesIO(png))
    image.load()
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    session.logger.info(caption, image=image)


def write_profile(session, result, path: str | Path) -> dict[str, dict]:
    """Save the profile of a structure result as PNG and show it in the log."""
    data = profile_data(result.residues, result.residue_values, result.residue_sd)
    band = f" (band: ± {result.sd_source})" if result.residue_sd is not None and result.sd_source else ""
    png = plot_profile(data, path, title=f"DEFMap dynamics of {result.structure}{band}")
    log_image(session, png, f"DEFMap profile {Path(path).name}")
    return data
