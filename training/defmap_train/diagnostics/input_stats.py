"""Do real maps fall inside the range of the training maps, as the network sees them?  ``defmap-train input-stats``.

For each map, after the bundle's own preprocessing for the 5 Å map + model network (the sharpness step,
``recipe.structure_input``, then ``preprocess.prepare_points`` at the fitted model's heavy atoms: resampled to 1.5 Å,
low-passed, standardized over the patch support), statistics of what the network reads: the standardized values at
the atoms (mean, SD, skewness, kurtosis) and at the support voxels (quantiles), the slope of the radial power
spectrum of the raw map between 10 Å and its resolution (how sharpened it is), and the same slope after the
sharpness step with the B-factor it added.  Rows: the engine's maps (the training family, here its md_reference hard
maps), the image-formation maps (cross-family) and EMD-3488 with 5ME2 (a real map).  A real map whose numbers lie
outside the engine's range shows where the engine should change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from chimerax.defmap import preprocess as pp

from ..paths import SHARED, write_json

QUANTILES = (0.05, 0.5, 0.95)


def map_stats(values: np.ndarray, origin: np.ndarray, voxel_size: float, resolution: float, xyz: np.ndarray) -> dict:
    """What the 5 Å network's input looks like for this map and model: the map as structure mode reads it
    (``recipe.structure_input``: its window, blurred to the model's sharpness), then preprocessed."""
    from chimerax.defmap.network import read_model_info
    from chimerax.defmap.recipe import structure_input

    from ..paths import REPO
    info = read_model_info(REPO / "onnx_models" / "defmap_mapmodel_5A.onnx")
    spec = info.spec
    x2i, _ = pp.grid_transforms(origin, (voxel_size,) * 3)
    xyz = np.asarray(xyz, dtype=np.float64)
    read, rx2i, sharp = structure_input(info, np.asarray(values, np.float32), x2i, xyz,
                                        pp.points_inside_map(xyz, x2i, np.shape(values)), resolution)
    prep = pp.prepare_points(read, rx2i, xyz, spec, map_resolution=resolution)
    g = prep.grid.values
    at = g[tuple(prep.centers.T)]
    support = pp.support_mask(g.shape, prep.centers, spec.box) & prep.grid.inside
    sv = g[support]
    return {"atoms_mean": float(at.mean()), "atoms_sd": float(at.std()), "atoms_skew": float(stats.skew(at)),
            "atoms_kurtosis": float(stats.kurtosis(at)),
            **{f"support_q{int(q * 100)}": float(np.quantile(sv, q)) for q in QUANTILES},
            "spectrum_slope": pp.spectrum_slope(values, voxel_size, resolution),
            "slope_as_read": pp.spectrum_slope(read, pp.axis_spacing(rx2i), resolution),
            "blur_b_factor": sharp.b_factor}


def _rows(a) -> list[tuple[str, str, dict]]:
    from ..image_formation import image_formation_map
    from ..md_reference import MD_DIR, load_chain, md_chains
    from ..structure import load_structure
    from ..validate_md import cached_maps, mrc_map
    rows = []
    for name in md_chains(MD_DIR)[: a.limit or None]:
        st, _ = load_chain(MD_DIR, name)
        for m in cached_maps(MD_DIR, name, 1):
            if str(m["variant"]) == "hard":
                rows.append(("engine hard (training family)", name, map_stats(
                    m["values"], m["origin"], float(m["voxel_size"]), float(m["resolution"]), m["xyz"])))
        m = image_formation_map(name, "ensemble", 0)
        rows.append(("image formation (cross-family)", name, map_stats(
            m["values"], m["origin"], m["voxel_size"], m["resolution"], m["xyz"])))
    emd = SHARED / "emdb" / "emd_3488.mrc"
    if emd.is_file():
        m = mrc_map(emd, 3.2, load_structure(emd.parent / "5me2.pdb").xyz)
        rows.append(("real map", "EMD-3488 + 5ME2", map_stats(m["values"], m["origin"], m["voxel_size"],
                                                               m["resolution"], m["xyz"])))
    return rows


def run(a) -> dict:
    rows = _rows(a)
    keys = list(rows[0][2])
    lines = ["Command: `defmap-train input-stats" + (f" --limit {a.limit}" if a.limit else "") + "` (the 5 Å map + "
             "model network's input after the bundle's preprocessing, the sharpness step included; spectrum slope of "
             "the raw map, of the part structure mode reads after that step, and the B-factor it blurred by)", "",
             "| family | map | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    fams: dict[str, list[dict]] = {}
    for fam, name, d in rows:
        fams.setdefault(fam, []).append(d)
        lines.append(f"| {fam} | {name} | " + " | ".join(f"{d[k]:.3g}" for k in keys) + " |")
    lines += ["", "| family | " + " | ".join(f"{k} (5–95 %)" for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for fam, ds in fams.items():
        lines.append(f"| {fam} | " + " | ".join(
            f"{np.nanquantile([d[k] for d in ds], 0.05):.3g} – {np.nanquantile([d[k] for d in ds], 0.95):.3g}"
            for k in keys) + " |")
    text = "\n".join(lines)
    print(text)
    out = {"rows": [{"family": f, "map": n, **d} for f, n, d in rows]}
    if a.out:
        Path(a.out).with_suffix(".md").write_text("# input-stats (generated; do not edit)\n\n" + text + "\n",
                                                   encoding="utf-8")
        write_json(Path(a.out).with_suffix(".json"), out)
    return out


__all__ = ["map_stats", "run"]
