"""What the map's own shape says without a model: its contour (the highest voxels), pseudo-atoms binned from it and
how deeply the contour buries each voxel (weighted contact number).  Free of ChimeraX imports: training uses it too."""

from __future__ import annotations

import numpy as np

RESIDUE_VOLUME = 135.0  # Å^3 a residue fills in a map (about 1.23 Å^3 per dalton x 110 Da)
ENVELOPE_RESOLUTION = 7.0  # Å, at least: auto_level reads the molecule's envelope, not its side chains


def top_voxels(lattice: np.ndarray, n_voxels: int) -> np.ndarray:
    """Flat indices of the ``n_voxels`` highest voxels of a lattice: the map's contour, as voxel mode's level
    encloses it (or, without a level, the protein's volume), on the low-passed lattice so noise spikes do not count."""
    v = np.asarray(lattice).ravel()
    n = int(min(max(n_voxels, 0), v.size))
    if n == 0:
        return np.empty(0, dtype=np.int64)
    level = np.partition(v, v.size - n)[v.size - n]  # a float copy, not an index per voxel (large lattices)
    above = np.flatnonzero(v > level)
    return np.concatenate([above, np.flatnonzero(v == level)[:n - len(above)]])


def map_pseudo_atoms(lattice: np.ndarray, n_voxels: int, voxel_size: float, phase=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Pseudo-atoms of a map's own elastic network (no model), in Å on the lattice's index frame (x, y, z from voxel
    0): the ``n_voxels`` highest voxels of the low-passed lattice, binned into cubes of one residue's volume; each cube
    holding at least a quarter of its voxels gives one pseudo-atom at their centroid.  Low-passed values keep noise
    spikes from standing in for the molecule; the volume is the user's contour (voxel mode) or the model's residues."""
    v = np.asarray(lattice)
    top = top_voxels(v, n_voxels)
    if len(top) < 4:
        return np.empty((0, 3))
    pts = np.stack(np.unravel_index(top, v.shape), axis=1)[:, ::-1] * float(voxel_size)  # x, y, z
    side = RESIDUE_VOLUME ** (1.0 / 3.0)
    cell = np.floor(pts / side + np.asarray(phase, dtype=np.float64)).astype(np.int64)
    cell -= cell.min(axis=0)
    _, inv, cnt = np.unique(np.ravel_multi_index(cell.T, cell.max(axis=0) + 1), return_inverse=True,
                            return_counts=True)
    inv = inv.reshape(-1)
    cen = np.stack([np.bincount(inv, pts[:, k]) / cnt for k in range(3)], axis=1)
    return cen[cnt >= 0.25 * RESIDUE_VOLUME / float(voxel_size) ** 3]


PACKING_RADIUS = 30.0  # Å: contour voxels this close count towards a voxel's packing


def convolve_same(volume: np.ndarray, kernel: np.ndarray, slab: int = 32) -> np.ndarray:
    """``volume`` convolved with an odd cubic ``kernel`` (zero outside the volume), same shape, float32: FFTs of one
    z slab at a time, so memory stays a few slab-sized arrays (whole-volume FFT convolution of a large voxel-mode
    lattice took ~150 bytes per voxel)."""
    from scipy import fft
    n = kernel.shape[0] // 2
    z = volume.shape[0]
    padded = np.pad(np.asarray(volume, dtype=np.float32), ((n, n + (-z) % slab),) + ((n, n),) * 2)
    shape = [fft.next_fast_len(d, real=True) for d in (slab + 2 * n,) + padded.shape[1:]]
    kf = fft.rfftn(kernel.astype(np.float32), shape)
    out = np.empty(volume.shape, dtype=np.float32)
    for z0 in range(0, z, slab):
        part = fft.irfftn(fft.rfftn(padded[z0:z0 + slab + 2 * n], shape) * kf, shape)
        out[z0:z0 + slab] = part[2 * n:2 * n + slab, 2 * n:2 * n + volume.shape[1], 2 * n:2 * n + volume.shape[2]][
            :z - z0]
    return out


def map_packing(lattice: np.ndarray, n_voxels: int, voxel_size: float, centers_zyx: np.ndarray,
                radius: float = PACKING_RADIUS) -> np.ndarray:
    """Minus the log weighted contact number of each centre voxel in the map's contour (:func:`top_voxels`): the sum of
    1/r^2 over contour voxels within ``radius``, Lin et al.'s WCN (Proteins 2008) read on the map instead of atoms.
    Buried voxels have many contour voxels around them and move less, so larger values mean more flexible; it tells
    voxel mode, which has no model, how deeply the map's own shape buries each point (fitted weight:
    ``map_packing_weight``)."""
    v = np.asarray(lattice)
    mask = np.zeros(v.size, dtype=bool)
    mask[top_voxels(v, n_voxels)] = True
    n = int(np.ceil(radius / voxel_size))
    g = np.arange(-n, n + 1, dtype=np.float64) * voxel_size
    r2 = g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2
    kernel = np.where((r2 > 0) & (r2 <= radius ** 2), 1.0 / np.maximum(r2, 1e-12), 0.0).astype(np.float32)
    wcn = convolve_same(mask.reshape(v.shape), kernel)
    c = np.asarray(centers_zyx, dtype=np.int64).reshape(-1, 3)
    return -np.log(np.maximum(wcn[c[:, 0], c[:, 1], c[:, 2]].astype(np.float64), 1.0 / radius ** 2))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best splits the values into two classes (Otsu 1979: most between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist, dtype=np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(edges[1:][np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def auto_level(values_zyx: np.ndarray, voxel_size: float, resolution: float) -> tuple[float, int]:
    """(level, voxels at or above it): the contour voxel mode scores at when the user gives none.

    ChimeraX's initial level encloses 1 % of the box, often a small part of the molecule. Here the map is low-passed
    to ``resolution`` (at least ENVELOPE_RESOLUTION: noise and sharpening spread the histogram of a raw map so much
    that it has no threshold of its own), Otsu's threshold splits the low-passed map into molecule and solvent, and
    the level is the map value that encloses as many voxels of the map itself (what it encloses on the validation
    maps and on EMD-3488, beside ChimeraX's level: docs/validation.md). ValueError when the map has no contrast to
    split."""
    from scipy import ndimage

    from .preprocess import SIGMA_PER_RESOLUTION
    v = np.asarray(values_zyx, dtype=np.float32)
    sigma = SIGMA_PER_RESOLUTION * max(float(resolution), ENVELOPE_RESOLUTION) / float(voxel_size)
    smooth = ndimage.gaussian_filter(v, sigma, mode="nearest")
    lo, hi = float(smooth.min()), float(smooth.max())
    if not hi > lo:
        raise ValueError("the map has no contrast to choose a contour level from")
    n = int((smooth >= otsu_threshold(smooth)).sum())
    if n == 0 or n == v.size:
        raise ValueError("the map's values do not split into molecule and solvent")
    flat = v.reshape(-1)
    return float(np.partition(flat, flat.size - n)[flat.size - n]), n
