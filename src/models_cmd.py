"""``defmap models``: the installed models with their metadata, and which one a map resolution would pick."""

from __future__ import annotations

from html import escape

from chimerax.core.commands import CmdDesc

from . import network
from .args import MapResolutionArg
from .predict import check_ranges

# CV metrics worth a column (a model's metadata may carry many more)
SHOWN_METRICS = ("residue_r", "atom_r", "anm_r", "coverage68_calibrated", "baseline_residue_r")


def defmap_models(session, map_resolution: float | None = None, return_json: bool = False):
    """List models in $DEFMAP_MODEL_PATH and the bundle; mark the ones ``mapResolution`` would choose (structure mode
    prefers the map + model kind, voxel mode needs a map-only one)."""
    check_ranges(map_resolution)  # Python callers (the command's MapResolutionArg refuses the same)
    models = network.installed_models()
    chosen = voxel = None
    if models and map_resolution is not None:
        chosen = network.choose_model(models, map_resolution, structure=True)
        try:
            voxel = network.choose_model(models, map_resolution, structure=False)
        except network.ModelError:  # only map + model models installed: voxel mode has none
            voxel = None
    rows = []
    for m in models:
        shown = {k: v for k, v in m.metrics.items() if k in SHOWN_METRICS} or m.metrics
        metrics = ", ".join(f"{k} {v:.3g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in shown.items())
        modes = [w for w, c in (("structure", chosen), ("voxel", voxel)) if c is not None and m.path == c.path]
        mark = f" ◀ {' and '.join(modes)}" if modes else ""
        rows.append(f"<tr><td>{escape(m.name)}{mark}</td><td>{m.resolution:g} Å</td><td>{m.spec.voxel_size:g} Å, "
                    f"{m.spec.box}³</td><td>{'yes' if m.fully_convolutional else 'no'}</td>"
                    f"<td>{escape(metrics) or '—'}</td><td>{escape(m.description) or '—'}</td>"
                    f"<td>{escape(str(m.path))}</td></tr>")
    if models:
        pick = (f"; ◀ marks the models chosen for a {map_resolution:g} Å map in structure and voxel mode"
                if chosen is not None else "")
        html = ("<table border=1 cellpadding=4 style='border-collapse:collapse'>"
                f"<caption>DEFMap models ({len(models)}){pick}</caption>"
                "<tr><th>name</th><th>trained at</th><th>voxel, box</th><th>dense</th><th>metrics</th>"
                "<th>description</th><th>file</th></tr>" + "".join(rows) + "</table>")
        session.logger.info(html, is_html=True)
    else:
        session.logger.info("No DEFMap model is installed; set DEFMAP_MODEL_PATH or give 'model PATH'")
    if not return_json:
        return models
    from chimerax.core.commands import ArrayJSONEncoder, JSONResult
    data = {"models": [m.summary() for m in models], "chosen": None if chosen is None else chosen.name,
            "chosen_voxel": None if voxel is None else voxel.name,
            "search_path": [str(d) for d in network.model_dirs()]}
    return JSONResult(ArrayJSONEncoder().encode(data), models)


def defmap_models_desc() -> CmdDesc:
    return CmdDesc(keyword=[("map_resolution", MapResolutionArg)],
                   synopsis="list installed DEFMap models and which one a map resolution picks")
