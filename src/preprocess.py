"""Map preprocessing and patch extraction: the one implementation used by the bundle at run time and by training.

Pure numpy/scipy, no ChimeraX imports.  Grids are float32 arrays indexed ``[z, y, x]`` (ChimeraX/MRC order) on an
axis-aligned lattice with isotropic spacing ``voxel_size`` and ``origin`` = xyz of voxel (0, 0, 0).

Pipeline (every constant comes from the model's :class:`FeatureSpec`, stored in the ONNX metadata):
1. resample the input map (any voxel size, origin, axis order, skewed cell) onto the model's lattice, only over the
   region the patches need, so memory scales with the structure and not the box;
2. Gaussian low-pass to the model's filter resolution (accounting for the map's own resolution when known);
3. standardize over the *support* (the voxels the patches see), then clip negatives to 0 — unlike DEFMap's
   whole-box z-score this does not change when a map is padded with empty box;
4. one cubic patch per unique centre voxel (heavy atoms rounded to the lattice, or voxels above a level).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

# molmap convention: Gaussian sigma = 0.225 x resolution, i.e. 1 / (pi * sqrt(2))
SIGMA_PER_RESOLUTION = 1.0 / (np.pi * np.sqrt(2.0))
NORMALIZATIONS = ("support_zscore_clip",)


@dataclass(frozen=True)
class FeatureSpec:
    """How a model wants its input; serialized into the ONNX metadata so code never hard-codes it."""

    voxel_size: float = 1.5
    box: int = 10
    filter_resolution: float = 5.0
    normalization: str = "support_zscore_clip"

    def validate(self) -> None:
        if not (0.2 <= self.voxel_size <= 10.0):
            raise ValueError(f"voxel_size {self.voxel_size} Å is outside 0.2–10 Å")
        if not (2 <= int(self.box) <= 64) or int(self.box) != self.box:
            raise ValueError(f"box {self.box} must be an integer from 2 to 64 voxels")
        if not (0.5 <= self.filter_resolution <= 50.0):
            raise ValueError(f"filter_resolution {self.filter_resolution} Å is outside 0.5–50 Å")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization '{self.normalization}' (known: {', '.join(NORMALIZATIONS)})")

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        if float(d["box"]) != int(float(d["box"])):
            raise ValueError(f"box {d['box']} must be an integer from 2 to 64 voxels")
        spec = cls(voxel_size=float(d["voxel_size"]), box=int(d["box"]),
                   filter_resolution=float(d["filter_resolution"]), normalization=str(d["normalization"]))
        spec.validate()
        return spec

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass
class Grid:
    """A preprocessed map on the model lattice."""

    values: np.ndarray  # float32 [z, y, x]
    origin: np.ndarray  # xyz of voxel (0,0,0), Å
    voxel_size: float
    inside: np.ndarray | None = field(default=None, repr=False)  # bool [z,y,x]: lattice point lies inside the input map

    def xyz_to_zyx_index(self, xyz: np.ndarray) -> np.ndarray:
        """Nearest lattice voxel (z, y, x) of each point."""
        ijk = np.rint((np.asarray(xyz, dtype=np.float64) - self.origin) / self.voxel_size).astype(np.int64)
        return ijk[:, ::-1]

    def zyx_index_to_xyz(self, zyx: np.ndarray) -> np.ndarray:
        return np.asarray(zyx, dtype=np.float64)[:, ::-1] * self.voxel_size + self.origin


def lowpass_sigma_voxels(spec: FeatureSpec, map_resolution: float | None) -> float:
    """Gaussian sigma (voxels) that brings a map to the model's filter resolution.

    With a known map resolution R_map, blurring by sqrt(R_f^2 - R_map^2) lands near R_f for any input; unknown
    resolution gets the full R_f blur, as DEFMap's fixed low-pass did.
    """
    r_f = spec.filter_resolution
    r_eff = r_f if map_resolution is None else np.sqrt(max(r_f * r_f - float(map_resolution) ** 2, 0.0))
    return float(SIGMA_PER_RESOLUTION * r_eff / spec.voxel_size)


def lattice_for_points(points: np.ndarray, spec: FeatureSpec,
                       margin_voxels: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Origin (on the global lattice through 0,0,0) and zyx shape of a grid covering points plus a margin."""
    vs = spec.voxel_size
    lo = np.floor(points.min(axis=0) / vs).astype(np.int64) - margin_voxels
    hi = np.ceil(points.max(axis=0) / vs).astype(np.int64) + margin_voxels
    shape_xyz = hi - lo + 1
    return lo * vs, (int(shape_xyz[2]), int(shape_xyz[1]), int(shape_xyz[0]))


def margin_voxels(spec: FeatureSpec, sigma_vox: float) -> int:
    """Lattice padding so that patches and the low-pass filter never see the grid edge."""
    return int(spec.box) // 2 + 1 + int(np.ceil(3.0 * sigma_vox))


def resample(values_zyx: np.ndarray, xyz_to_ijk: np.ndarray, origin: np.ndarray, shape_zyx: tuple[int, int, int],
             voxel_size: float, max_voxels: int = 400_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear resampling of a map onto an axis-aligned lattice.

    ``xyz_to_ijk`` (3x4) maps scene xyz to fractional input indices (i fastest, as ChimeraX's
    ``GridData.xyz_to_ijk_transform``), which covers any voxel size, origin, axis order and skewed cell.
    Returns (values, inside): lattice points outside the input map get 0 and inside=False.
    """
    nvox = int(np.prod(shape_zyx, dtype=np.int64))
    if nvox > max_voxels:
        raise MemoryError(f"the resampled grid would have {nvox:,} voxels ({nvox * 4 / 2**30:.1f} GiB)")
    check_memory(nvox * RESAMPLE_BYTES_PER_VOXEL, "the resampled grid")
    m = np.asarray(xyz_to_ijk, dtype=np.float64).reshape(3, 4).copy()
    # only the part of the input the lattice covers is converted to float32 (a small region of a big map stays small)
    full = np.array(values_zyx.shape[::-1], dtype=np.int64)
    lo, hi = source_window(m, origin, shape_zyx, voxel_size, full)
    src = np.ascontiguousarray(values_zyx[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]], dtype=np.float32)
    m[:, 3] -= lo  # indices into the cropped source
    src_offset = lo.astype(np.float64)
    out = np.empty(shape_zyx, dtype=np.float32)
    inside = np.empty(shape_zyx, dtype=bool)
    nz, ny, nx = shape_zyx
    x = origin[0] + voxel_size * np.arange(nx)
    y = origin[1] + voxel_size * np.arange(ny)
    for iz in range(nz):  # slab by slab keeps the coordinate arrays small
        z = origin[2] + voxel_size * iz
        yy, xx = np.meshgrid(y, x, indexing="ij")
        xyz = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, z)], axis=0)
        ijk = m[:, :3] @ xyz + m[:, 3:4]
        full_ijk = ijk + src_offset[:, None]
        ok = np.all((full_ijk >= -1e-6) & (full_ijk <= (full[:, None] - 1) + 1e-6), axis=0)
        vals = ndimage.map_coordinates(src, ijk[::-1], order=1, mode="nearest", prefilter=False)
        vals[~ok] = 0.0
        out[iz] = vals.reshape(ny, nx)
        inside[iz] = ok.reshape(ny, nx)
    return out, inside


def source_window(xyz_to_ijk: np.ndarray, origin: np.ndarray, shape_zyx: tuple[int, int, int], voxel_size: float,
                  size_ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) ijk bounds of the input map's voxels that trilinear resampling onto this lattice reads (with one voxel
    to spare on each side, clipped to a map of ``size_ijk`` voxels)."""
    m = np.asarray(xyz_to_ijk, dtype=np.float64).reshape(3, 4)
    corners = _box_corners_xyz(shape_zyx, np.hstack([np.eye(3) * voxel_size, np.reshape(origin, (3, 1))]))
    cijk = corners @ m[:, :3].T + m[:, 3]
    size = np.asarray(size_ijk, dtype=np.int64)
    lo = np.clip(np.floor(cijk.min(axis=0)).astype(np.int64) - 1, 0, size - 1)
    hi = np.clip(np.ceil(cijk.max(axis=0)).astype(np.int64) + 2, lo + 1, size)
    return lo, hi


def points_source_window(points_xyz: np.ndarray, xyz_to_ijk: np.ndarray, size_ijk: np.ndarray, spec: FeatureSpec,
                         map_resolution: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) ijk bounds of the part of an input map that :func:`prepare_points` reads for these points (their
    lattice plus the patch and filter margin), so a caller can read only that subregion of a tomogram-sized map."""
    sigma = lowpass_sigma_voxels(spec, map_resolution)
    origin, shape = lattice_for_points(np.asarray(points_xyz, dtype=np.float64), spec, margin_voxels(spec, sigma))
    return source_window(xyz_to_ijk, origin, shape, spec.voxel_size, size_ijk)


RESAMPLE_BYTES_PER_VOXEL = 16  # raw + filtered + standardized float32, inside and support masks
VOXEL_MODE_BYTES_PER_VOXEL = 48  # plus centre indices, the nearest-voxel fill of the dynamics map and, after
# inference, the packing term (map_shape.map_packing: about 17 bytes per voxel at its peak, measured on a 300³ lattice)


def available_memory() -> int | None:
    """Bytes of memory available to this process now (None when it cannot be told)."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:
        try:
            import os
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None


def check_memory(nbytes: int, what: str, fraction: float = 0.8) -> None:
    """MemoryError naming the size needed when ``nbytes`` exceeds ``fraction`` of the available memory."""
    avail = available_memory()
    if avail is not None and nbytes > fraction * avail:
        raise MemoryError(f"{what} would need about {nbytes / 2**30:.1f} GiB of memory, but only "
                          f"{avail / 2**30:.1f} GiB is available")


def lowpass(values: np.ndarray, sigma_vox: float) -> np.ndarray:
    if sigma_vox <= 0:
        return values.astype(np.float32, copy=True)
    return ndimage.gaussian_filter(values.astype(np.float32, copy=False), sigma_vox, mode="constant", cval=0.0,
                                   truncate=3.0).astype(np.float32, copy=False)


def support_mask(shape_zyx: tuple[int, int, int], centers_zyx: np.ndarray, box: int) -> np.ndarray:
    """Voxels covered by at least one patch (each patch spans c - box//2 … c + box - box//2 - 1)."""
    seed = np.zeros(shape_zyx, dtype=bool)
    seed[tuple(centers_zyx.T)] = True
    lo = box // 2
    # maximum_filter with an asymmetric footprint matching the patch extent
    origin = (box - 1) // 2 - lo
    return ndimage.maximum_filter(seed, size=box, mode="constant", cval=False, origin=origin)


def require_features(raw: np.ndarray, sel: np.ndarray) -> None:
    """ValueError when the input map is constant where the patches look (edge effects of the low-pass would
    otherwise give a constant map 'features')."""
    v = raw[sel]
    if v.size and float(v.max()) - float(v.min()) <= 1e-6 * max(abs(float(v.max())), abs(float(v.min())), 1e-30):
        raise ValueError("the map is constant under the patches, so it has no density features")


def standardize(values: np.ndarray, support: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
    """z-score over the support voxels (inside the map), negatives clipped to 0."""
    sel = support if inside is None else (support & inside)
    v = values[sel]
    if v.size == 0:
        raise ValueError("no map values lie under the patches")
    v64 = v.astype(np.float64)
    mean, sd = float(v64.mean()), float(v64.std())
    if not np.isfinite(mean) or not np.isfinite(sd):
        raise ValueError("the map has non-finite values under the patches")
    if sd <= 1e-12 * max(1.0, abs(mean)):
        raise ValueError("the map is constant under the patches, so it has no density features")
    out = (values - np.float32(mean)) / np.float32(sd)
    np.maximum(out, 0.0, out=out)
    if inside is not None:
        out[~inside] = 0.0
    return out.astype(np.float32, copy=False)


def extract_patches(values: np.ndarray, centers_zyx: np.ndarray, box: int) -> np.ndarray:
    """(N, box, box, box) float32 patches, vectorized (one fancy-index gather, no Python loop per voxel)."""
    lo = box // 2
    starts = np.asarray(centers_zyx, dtype=np.int64) - lo
    if len(starts) and (starts.min() < 0 or np.any(starts + box > np.array(values.shape))):
        raise IndexError("a patch would cross the grid edge; grids need a margin of box//2 + 1 voxels")
    windows = np.lib.stride_tricks.sliding_window_view(values, (box, box, box))
    return np.ascontiguousarray(windows[starts[:, 0], starts[:, 1], starts[:, 2]], dtype=np.float32)


def iter_patch_batches(values: np.ndarray, centers_zyx: np.ndarray, box: int, batch_size: int) -> Iterator[np.ndarray]:
    """Patches in batches of (B, 1, box, box, box), so memory stays flat however many centres there are."""
    for s in range(0, len(centers_zyx), batch_size):
        yield extract_patches(values, centers_zyx[s:s + batch_size], box)[:, None]


@dataclass
class Prepared:
    grid: Grid
    centers: np.ndarray  # (M, 3) unique centre voxels, zyx
    point_to_center: np.ndarray  # (N,) index into centers for each input point, -1 if the point is outside the map
    sigma_vox: float


def prepare_points(values_zyx: np.ndarray, xyz_to_ijk: np.ndarray, points_xyz: np.ndarray, spec: FeatureSpec,
                   map_resolution: float | None = None, point_inside: np.ndarray | None = None) -> Prepared:
    """Preprocess a map for per-point (atom) prediction; each unique lattice voxel becomes one patch.

    ``point_inside`` marks points that lie inside the input map (the caller knows the map bounds best); points
    outside get ``point_to_center == -1``.
    """
    spec.validate()
    pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    if point_inside is None:
        point_inside = points_inside_map(pts, xyz_to_ijk, values_zyx.shape)
    if not point_inside.any():
        raise ValueError("no atoms lie inside the map")
    sigma = lowpass_sigma_voxels(spec, map_resolution)
    origin, shape = lattice_for_points(pts[point_inside], spec, margin_voxels(spec, sigma))
    raw, inside = resample(values_zyx, xyz_to_ijk, origin, shape, spec.voxel_size)
    grid = Grid(raw, origin, spec.voxel_size, inside)
    idx = grid.xyz_to_zyx_index(pts[point_inside])
    centers, inverse = np.unique(idx, axis=0, return_inverse=True)
    support = support_mask(shape, centers, spec.box)
    require_features(raw, support & inside)
    filt = lowpass(raw, sigma)
    del raw
    grid.values = standardize(filt, support, inside)
    p2c = np.full(len(pts), -1, dtype=np.int64)
    p2c[point_inside] = inverse.reshape(-1)
    return Prepared(grid, centers, p2c, sigma)


def prepare_voxels(values_zyx: np.ndarray, xyz_to_ijk: np.ndarray, ijk_to_xyz: np.ndarray, spec: FeatureSpec,
                   level: float, map_resolution: float | None = None) -> Prepared:
    """Preprocess a whole map for voxel mode: centres are the lattice voxels that enclose the volume ``level``
    encloses in the map (:func:`carried_level`)."""
    spec.validate()
    corners = _box_corners_xyz(values_zyx.shape, ijk_to_xyz)
    sigma = lowpass_sigma_voxels(spec, map_resolution)
    origin, shape = lattice_for_points(corners, spec, margin_voxels(spec, sigma))
    check_memory(int(np.prod(shape, dtype=np.int64)) * VOXEL_MODE_BYTES_PER_VOXEL,
                 f"voxel mode on a {shape[2]}×{shape[1]}×{shape[0]} lattice")
    raw, inside = resample(values_zyx, xyz_to_ijk, origin, shape, spec.voxel_size)
    centers = np.argwhere((raw >= carried_level(values_zyx, raw, level, inside)) & inside)
    if len(centers) == 0:
        raise ValueError(f"no map values are at or above the level {level:g}")
    support = support_mask(shape, centers, spec.box)
    require_features(raw, support & inside)
    filt = lowpass(raw, sigma)
    del raw
    grid = Grid(filt, origin, spec.voxel_size, inside)
    grid.values = standardize(filt, support, inside)
    return Prepared(grid, centers, np.arange(len(centers)), sigma)


def carried_level(before: np.ndarray, after: np.ndarray, level: float, inside: np.ndarray | None = None) -> float:
    """The level of ``after`` (its voxels in ``inside``; all when None) that encloses the fraction of ``before`` that
    ``level`` encloses: a contour carried from the map as the user sees it to the blurred map, or to the resampled
    lattice, by the volume it encloses.

    Trilinear resampling of a finely sampled noisy map to 1.5 Å averages neighbouring voxels and so flattens its
    peaks: on a sharpened 0.8 Å engine map the level enclosing the molecule's volume in the map kept 39 lattice
    voxels of the ~7,000 that volume holds, and voxel mode then scored noise.  Carried by volume, the contour is the
    one the user chose: at least one voxel when ``level`` encloses any of ``before``, and ``level`` itself when it
    encloses none or all of it."""
    frac = float(np.mean(np.asarray(before) >= level))
    after = np.asarray(after)
    n_inside = after.size if inside is None else int(np.count_nonzero(inside))
    if frac <= 0.0:
        return float(level)
    k = max(1, int(round(frac * n_inside)))  # voxels the same volume holds
    if k >= n_inside:
        return float(level)
    step = -(-after.size // LEVEL_SAMPLE)  # a regular sample of a big map: its quantile is as good, and fast
    vals = after.reshape(-1)[::step]
    if inside is not None:
        vals = vals[np.asarray(inside, dtype=bool).reshape(-1)[::step]]
    if len(vals) == 0:
        return float(level)
    j = min(len(vals) - 1, int(round((1.0 - k / n_inside) * len(vals))))
    return float(np.partition(vals, j)[j])


LEVEL_SAMPLE = 4_000_000  # voxels carried_level reads at most (a 400³ map has 64M)


def points_inside_map(points_xyz: np.ndarray, xyz_to_ijk: np.ndarray, shape_zyx: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(xyz_to_ijk, dtype=np.float64).reshape(3, 4)
    ijk = points_xyz @ m[:, :3].T + m[:, 3]
    hi = np.array(shape_zyx[::-1], dtype=np.float64) - 1
    return np.all((ijk >= -0.5) & (ijk <= hi + 0.5), axis=1)


def _box_corners_xyz(shape_zyx: tuple[int, ...], ijk_to_xyz: np.ndarray) -> np.ndarray:
    m = np.asarray(ijk_to_xyz, dtype=np.float64).reshape(3, 4)
    n = np.array(shape_zyx[::-1], dtype=np.float64) - 1
    c = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    return c @ m[:, :3].T + m[:, 3]


def grid_transforms(origin_xyz, step_xyz, rotation=None) -> tuple[np.ndarray, np.ndarray]:
    """(xyz_to_ijk, ijk_to_xyz) 3x4 matrices for a grid with this origin, step and optional 3x3 cell rotation."""
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    a = r * np.asarray(step_xyz, dtype=np.float64)[None, :]
    fwd = np.hstack([a, np.asarray(origin_xyz, dtype=np.float64).reshape(3, 1)])
    inv_a = np.linalg.inv(a)
    inv = np.hstack([inv_a, (-inv_a @ np.asarray(origin_xyz, dtype=np.float64)).reshape(3, 1)])
    return inv, fwd


# ---------------------------------------------------------------- sharpness (before everything else)

SLOPE_LOW = 10.0  # Å: the spectrum slope is read between this and the map's resolution
SLOPE_CROP = 160  # voxels per axis at most under the slope's FFT (a crop around the density), so big maps cost little


@dataclass(frozen=True)
class Sharpness:
    """How sharp the map was and what was done about it: its spectrum slope (:func:`spectrum_slope`), the slope
    the model asks for (``sharpness_slope`` in its calibration; None: none) and the B-factor (Å²) of the Gaussian
    blur that brought it there (0: the map was no sharper than that)."""

    slope: float
    target: float | None
    b_factor: float


def axis_spacing(xyz_to_ijk: np.ndarray) -> np.ndarray:
    """Voxel spacing (Å) along the array's axes, in [z, y, x] order."""
    a = np.linalg.inv(np.asarray(xyz_to_ijk, dtype=np.float64).reshape(3, 4)[:, :3])
    return np.linalg.norm(a, axis=0)[::-1]


def _density_crop(values: np.ndarray, size: int = SLOPE_CROP) -> np.ndarray:
    """The map, or where it is larger than ``size`` along an axis, a ``size`` window there centred on its strongest
    density (the centroid of its top 1 % values), so the slope reads the molecule rather than empty box."""
    if max(values.shape) <= size:
        return values
    step = max(1, int(np.ceil(max(values.shape) / 128)))
    coarse = values[::step, ::step, ::step]
    top = np.argwhere(coarse >= np.quantile(coarse, 0.99)) * step
    centre = top.mean(axis=0) if len(top) else np.array(values.shape) / 2
    sl = []
    for c, n in zip(centre, values.shape):
        lo = int(np.clip(round(c) - size // 2, 0, max(n - size, 0)))
        sl.append(slice(lo, lo + min(size, n)))
    return values[tuple(sl)]


def spectrum_slope(values: np.ndarray, spacing, resolution: float, low: float = SLOPE_LOW) -> float:
    """Slope of the log radial power against 1/d² between ``low`` Å and ``resolution``: a Guinier-like sharpness
    (less negative is sharper; -B/2 for a map blurred by B).  ``spacing``: Å per voxel, one number or per [z, y, x]
    axis.  NaN when the band holds too few frequencies."""
    v = np.asarray(_density_crop(np.asarray(values)), dtype=np.float64)
    d = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    power = np.abs(np.fft.fftn(v - v.mean())) ** 2
    freq = np.sqrt(sum(np.meshgrid(*[np.fft.fftfreq(n, d=s) ** 2 for n, s in zip(v.shape, d)], indexing="ij")))
    band = (freq >= 1.0 / low) & (freq <= 1.0 / max(resolution, 2.0 * float(d.max())))
    if band.sum() < 10:
        return float("nan")
    shells = np.round(freq[band] * 200).astype(int)
    s2, p = [], []
    for k in np.unique(shells):
        sel = shells == k
        s2.append(float((freq[band][sel] ** 2).mean()))
        p.append(float(np.log(power[band][sel].mean() + 1e-30)))
    return float(np.polyfit(s2, p, 1)[0])


def match_sharpness(values: np.ndarray, xyz_to_ijk: np.ndarray, resolution: float,
                    target: float | None) -> tuple[np.ndarray, Sharpness]:
    """The map blurred by the Gaussian B-factor that brings its spectrum slope down to ``target``, and what was done.

    The networks were trained on unsharpened maps, whose power falls off steeply; deposited and reconstructed maps
    are sharpened (and noise flattens a spectrum too), which the networks then misread.  A map already at or below
    ``target`` is returned as it is; so is every map when ``target`` is None."""
    spacing = axis_spacing(xyz_to_ijk)
    slope = spectrum_slope(values, spacing, resolution)
    if target is None or not np.isfinite(slope) or slope <= target:
        return values, Sharpness(slope, target, 0.0)
    b = 2.0 * (slope - float(target))  # power ~ exp(-B s²/2): a blur by B lowers the slope by B/2
    sigma = np.sqrt(b / (8.0 * np.pi ** 2)) / spacing  # Gaussian of SD σ Å = B-factor 8π²σ²
    check_memory(int(values.size) * 8, "blurring the map to the training maps' sharpness")
    blurred = ndimage.gaussian_filter(np.asarray(values, dtype=np.float32), sigma, mode="nearest", truncate=3.0)
    return blurred, Sharpness(slope, float(target), b)


# ---------------------------------------------------------------- fitted-model density (second input channel)

ELEMENT_WEIGHTS = {"C": 6.0, "N": 7.0, "O": 8.0, "S": 16.0, "SE": 34.0, "P": 15.0}
MODEL_CHANNEL = "model_density"
MAP_CHANNEL = "density"


def element_weights(elements) -> np.ndarray:
    """Scattering weight per atom (atomic number; unknown elements count as carbon), as molmap uses."""
    return np.array([ELEMENT_WEIGHTS.get(str(e).upper(), 6.0) for e in elements], dtype=np.float64)


def splat_points(points_xyz: np.ndarray, weights: np.ndarray, origin: np.ndarray, shape_zyx: tuple[int, int, int],
                 voxel_size: float) -> np.ndarray:
    """Trilinear deposition of weighted points onto a [z, y, x] lattice (points off the lattice are dropped)."""
    f = (np.asarray(points_xyz, dtype=np.float64) - np.asarray(origin, dtype=np.float64)) / voxel_size
    i0 = np.floor(f).astype(np.int64)
    t = f - i0
    nz, ny, nx = shape_zyx
    out = np.zeros(nz * ny * nx, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ix, iy, iz = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                wt = w * (t[:, 0] if dx else 1 - t[:, 0]) * (t[:, 1] if dy else 1 - t[:, 1]) * \
                    (t[:, 2] if dz else 1 - t[:, 2])
                ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
                out += np.bincount((iz[ok] * ny + iy[ok]) * nx + ix[ok], wt[ok], minlength=out.size)
    return out.reshape(shape_zyx)


def model_density(prep: Prepared, points_xyz: np.ndarray, weights: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The fitted model's own density on the prepared map's lattice, normalized like the map channel.

    A molmap-style rigid density: atoms (weights = atomic numbers) deposited trilinearly and blurred by the Gaussian
    of the model's filter resolution (sigma = 0.225 x resolution), then z-scored over the same support voxels as the
    map with negatives clipped.  Where the map is blurrier than this (flexible parts), the map channel is wider and
    weaker than the model channel: the network reads the blur relative to what a rigid model would give.  Computed
    once per prediction; the bundle and training call this same function.
    """
    g = prep.grid
    shape = g.values.shape
    pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    raw = splat_points(pts, weights, g.origin, shape, g.voxel_size).astype(np.float32)
    sigma = SIGMA_PER_RESOLUTION * spec.filter_resolution / spec.voxel_size
    filt = lowpass(raw, sigma)
    support = support_mask(shape, prep.centers, spec.box)
    if g.inside is not None:
        support &= g.inside
    v = filt[support].astype(np.float64)
    sd = float(v.std()) if v.size else 0.0
    if sd <= 0:
        return np.zeros(shape, dtype=np.float32)
    out = (filt - np.float32(v.mean())) / np.float32(sd)
    np.maximum(out, 0.0, out=out)
    return out.astype(np.float32, copy=False)


def density_contrast(map_channel: np.ndarray, model_channel: np.ndarray, centers_zyx: np.ndarray) -> np.ndarray:
    """Fitted-model density minus map density at each centre voxel of the two standardized input channels: the
    density a rigid model puts where the map has less, i.e. blur read without the network.  Structure mode adds its
    z-score to the network's with ``calibration.contrast_weight``, fitted on a training CV (``fitted_on`` says
    which; the network alone reads it less well than this one voxel on maps without confounders)."""
    c = np.asarray(centers_zyx)
    return (model_channel[c[:, 0], c[:, 1], c[:, 2]] - map_channel[c[:, 0], c[:, 1], c[:, 2]]).astype(np.float64)


def map_values_at(values_zyx: np.ndarray, xyz_to_ijk: np.ndarray, points_xyz: np.ndarray) -> np.ndarray:
    """The map's own values at points, trilinear on its own grid (no resampling or filtering)."""
    m = np.asarray(xyz_to_ijk, dtype=np.float64).reshape(3, 4)
    ijk = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3) @ m[:, :3].T + m[:, 3]
    return ndimage.map_coordinates(np.asarray(values_zyx, dtype=np.float32), ijk[:, ::-1].T, order=1,
                                   mode="nearest").astype(np.float64)


def rigid_density_at(points_xyz: np.ndarray, weights: np.ndarray, resolution: float,
                     chunk: int = 20000) -> np.ndarray:
    """A rigid model's molmap density at its own atoms: sum over atoms j of w_j exp(-d^2 / 2 sigma^2), sigma = 0.225 x
    resolution, exact (no grid), neighbours within 3.5 sigma; chunked so memory stays bounded for large complexes."""
    from scipy.spatial import cKDTree
    xyz = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    w = np.asarray(weights, dtype=np.float64)
    sigma = SIGMA_PER_RESOLUTION * float(resolution)
    tree = cKDTree(xyz)
    out = np.empty(len(xyz))
    for lo in range(0, len(xyz), chunk):
        part = cKDTree(xyz[lo:lo + chunk])
        d = part.sparse_distance_matrix(tree, 3.5 * sigma, output_type="ndarray")
        d = d[d["j"] != d["i"] + lo]  # the atom itself is added below, whether or not scipy lists distance 0
        s = np.bincount(d["i"], w[d["j"]] * np.exp(-d["v"] ** 2 / (2 * sigma * sigma)), minlength=len(part.data))
        out[lo:lo + chunk] = s + w[lo:lo + chunk]
    return out


def native_contrast(map_at_atoms: np.ndarray, rigid_at_atoms: np.ndarray) -> np.ndarray:
    """z(rigid model density) minus z(map value) over the atoms, both at the map's own resolution and sampling
    (:func:`rigid_density_at`, :func:`map_values_at`): where the map holds less than a rigid model would, it is
    blurred, i.e. the atoms move.  Unlike :func:`density_contrast` on the network's 5 Å lattice, it keeps a sharp
    map's detail; structure mode adds it with ``calibration.native_contrast_weight`` (``weights_fitted_on`` says
    where it was fitted)."""
    out = np.full(len(map_at_atoms), np.nan)
    a, r = np.asarray(map_at_atoms, dtype=np.float64), np.asarray(rigid_at_atoms, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(r)
    if ok.sum() < 2 or a[ok].std() == 0 or r[ok].std() == 0:
        return out
    out[ok] = (r[ok] - r[ok].mean()) / r[ok].std() - (a[ok] - a[ok].mean()) / a[ok].std()
    return out


def stack_channels(prep: Prepared, channels, points_xyz: np.ndarray | None = None,
                   weights: np.ndarray | None = None, spec: FeatureSpec | None = None) -> np.ndarray:
    """(C, z, y, x) input for a model whose metadata lists ``channels`` ('density' and optionally 'model_density')."""
    out = []
    for c in channels:
        if c == MAP_CHANNEL:
            out.append(prep.grid.values)
        elif c == MODEL_CHANNEL:
            if points_xyz is None or weights is None or spec is None:
                raise ValueError("this model needs a fitted atomic model (its 'model_density' input channel)")
            out.append(model_density(prep, points_xyz, weights, spec))
        else:
            raise ValueError(f"unknown input channel '{c}'")
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)
