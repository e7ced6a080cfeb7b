"""Where map and model disagree, so that a dynamics value there should be read with care.

Two things make DEFMap's value wrong whatever the network does: model atoms where the map has no density (a loop
built into solvent, a register shift) read as extremely flexible, and density the model does not explain (a
ligand, cofactor, glycan or neighbour left out) sits in the patches of the residues around it.  Both are measured
on the map's own grid, with levels taken from the map and the model themselves:

* ``fit`` per residue: the map's mean value at the residue's heavy atoms over the map's contour level (the level
  voxel mode chooses, ``map_shape.auto_level``).  Below 1 the atoms lie outside the molecule's envelope; near 0
  they sit in solvent.  Flexible but modelled residues stay above it on the maps tried (EMD-3488: lowest residue
  0.8, median 4).
* unexplained density: connected regions of voxels at or above half the map's median value at the model's atoms
  (density as strong as that of a fairly well-ordered atom) farther than ``EXPLAINED`` Å from every model atom,
  of at least ``MIN_BLOB`` Å³, with the residues that line them.

Free of ChimeraX imports: the recipe calls :func:`assess`, the command logs and stores what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import map_shape
from . import preprocess as pp

LOW_FIT = 1.0  # fit below this: the residue's atoms lie outside the map's contour
MIN_STRETCH = 2  # consecutive residues below LOW_FIT before the log names them
EXPLAINED = 3.0  # Å: density within this of a model atom counts as explained by it
MIN_BLOB = 50.0  # Å³: about three heavy atoms; smaller unexplained regions are noise at these levels
LINING = 4.5  # Å: residues with an atom this close to a blob line it


@dataclass
class Blob:
    """A region of unexplained density: its volume (Å³), centre (xyz) and the residues lining it (caller's index)."""

    volume: float
    centre: np.ndarray
    residues: np.ndarray


@dataclass
class Misfit:
    """Per residue (``residue_ids`` order) the fit, the map's levels used, and the unexplained regions."""

    residue_ids: np.ndarray
    fit: np.ndarray
    level: float
    blob_level: float
    blobs: list[Blob] = field(default_factory=list)

    def low_stretches(self) -> list[np.ndarray]:
        """Runs of at least MIN_STRETCH consecutive residues (in ``residue_ids`` order) with fit below LOW_FIT, each
        as the residue ids."""
        low = np.r_[self.fit < LOW_FIT, False]
        out, start = [], None
        for i, flag in enumerate(low):
            if flag and start is None:
                start = i
            elif not flag and start is not None:
                if i - start >= MIN_STRETCH:
                    out.append(self.residue_ids[start:i])
                start = None
        return out


def assess(values: np.ndarray, xyz_to_ijk: np.ndarray, xyz: np.ndarray, residue_index: np.ndarray,
           resolution: float, residue_ids: np.ndarray | None = None) -> Misfit | None:
    """Map and model compared: ``values`` [z, y, x] with ``xyz_to_ijk`` (3x4), the heavy atoms' ``xyz`` in the map's
    frame and their residue index, the map's resolution (Å); ``residue_ids``: the residues to report, in order
    (default: each distinct index in order of first appearance).  None when the map has no contour to compare with."""
    values = np.asarray(values, dtype=np.float32)
    xyz = np.asarray(xyz, dtype=np.float64)
    residue_index = np.asarray(residue_index)
    m = np.asarray(xyz_to_ijk, dtype=np.float64).reshape(3, 4)
    step = float(np.abs(np.linalg.det(np.linalg.inv(m[:, :3])))) ** (1 / 3)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # maps with values near the float32 limit
            level, _ = map_shape.auto_level(values, step, resolution)
    except ValueError:
        return None
    if not np.isfinite(level):
        return None
    ok = np.isfinite(xyz).all(axis=1)
    at = np.full(len(xyz), np.nan)
    at[ok] = pp.map_values_at(values, m, xyz[ok])
    if residue_ids is None:
        residue_ids = np.array(list(dict.fromkeys(residue_index.tolist())), dtype=residue_index.dtype)
    pos = {int(r): i for i, r in enumerate(residue_ids)}
    idx = np.array([pos.get(int(r), -1) for r in residue_index])
    use = ok & (idx >= 0)
    s = np.bincount(idx[use], at[use], minlength=len(residue_ids))
    n = np.bincount(idx[use], minlength=len(residue_ids))
    with np.errstate(invalid="ignore", divide="ignore"):
        fit = s / np.where(n > 0, n, np.nan) / level if level > 0 else np.full(len(residue_ids), np.nan)
    blob_level = 0.5 * float(np.nanmedian(at[ok])) if ok.any() else np.nan
    out = Misfit(np.asarray(residue_ids), fit, float(level), blob_level)
    if np.isfinite(blob_level) and blob_level > 0:
        out.blobs = _blobs(values, m, xyz[ok], residue_index[ok], blob_level, step)
    return out


def _blobs(values: np.ndarray, m: np.ndarray, xyz: np.ndarray, residue_index: np.ndarray, level: float,
           step: float) -> list[Blob]:
    """Connected regions at or above ``level`` farther than EXPLAINED from every atom, largest first."""
    from scipy import ndimage
    from scipy.spatial import cKDTree
    zyx = np.argwhere(values >= level)
    if len(zyx) == 0 or len(xyz) == 0:
        return []
    i2x = np.linalg.inv(np.r_[m, [[0, 0, 0, 1]]])[:3]
    pts = zyx[:, ::-1] @ i2x[:, :3].T + i2x[:, 3]
    tree = cKDTree(xyz)
    d, _ = tree.query(pts, distance_upper_bound=EXPLAINED)
    far = np.zeros(values.shape, dtype=bool)
    sel = ~np.isfinite(d)
    far[tuple(zyx[sel].T)] = True
    labels, count = ndimage.label(far)
    if count == 0:
        return []
    voxel_volume = abs(float(np.linalg.det(i2x[:, :3])))
    sizes = np.bincount(labels[tuple(zyx[sel].T)], minlength=count + 1)
    big = [k for k in np.argsort(sizes)[::-1] if k > 0 and sizes[k] * voxel_volume >= MIN_BLOB]
    out = []
    lab_of = labels[tuple(zyx[sel].T)]
    far_pts = pts[sel]
    for k in big:
        p = far_pts[lab_of == k]
        near = tree.query_ball_point(p, LINING)
        atoms = np.unique(np.concatenate([np.asarray(a, dtype=np.int64) for a in near])) if len(near) else []
        out.append(Blob(float(sizes[k] * voxel_volume), p.mean(axis=0),
                        np.unique(residue_index[np.asarray(atoms, dtype=np.int64)])))
    return out
