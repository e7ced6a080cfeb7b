"""Simulated ensemble-average maps with domain randomization, and real maps read from MRC files.

A simulated map is the average over ensemble frames of a molmap-style Gaussian density (or, for RMSF tables with no
frames, the same average in closed form: per-atom Debye–Waller blurring with σ² = σ_res² + RMSF²/3).  Everything
that real maps do and that is *not* dynamics is randomized so the network cannot shortcut through intensity: a smooth
local-resolution field, per-residue intensity damage, B-factor sharpening/blurring, coloured noise, solvent masking,
voxel size, origin and box padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from chimerax.defmap.preprocess import SIGMA_PER_RESOLUTION

ACIDIC = {("ASP", "CG"), ("ASP", "OD1"), ("ASP", "OD2"), ("GLU", "CD"), ("GLU", "OE1"), ("GLU", "OE2")}


@dataclass
class SimMap:
    values: np.ndarray  # float32 [z, y, x]
    origin: np.ndarray  # xyz of voxel (0,0,0)
    voxel_size: float
    resolution: float  # nominal (what a user would type)
    params: dict
    model_xyz: np.ndarray | None = None  # where a model fitted into this map sits: the mean of the frames averaged


@dataclass
class Randomization:
    """Ranges of the nuisance parameters (defaults: hard, see the report's raw-intensity baseline)."""

    resolution: tuple[float, float] = (3.0, 7.0)
    local_res_spread: tuple[float, float] = (0.0, 3.0)  # Å added by the smooth local-resolution field
    residue_damage_sd: tuple[float, float] = (0.1, 0.35)  # log-normal per-residue intensity factor
    smooth_damage_sd: tuple[float, float] = (0.0, 0.3)  # log-normal spatially smooth intensity factor
    bfactor: tuple[float, float] = (-50.0, 60.0)  # Å², negative sharpens
    snr: tuple[float, float] = (2.0, 10.0)  # signal SD / noise SD inside the molecule (log-uniform)
    noise_slope: tuple[float, float] = (0.0, 2.0)  # noise power ∝ s^-slope
    mask_probability: float = 0.5
    voxel_size: tuple[float, float] = (0.7, 1.6)
    padding: tuple[float, float] = (4.0, 20.0)  # Å of box around the atoms
    n_frames: int = 50
    min_frames: int | None = None  # if set, average a random number of frames in [min_frames, n_frames] (real maps
    # come from finite ensembles; md_reference has 10-20 snapshots)

    def to_dict(self) -> dict:
        return asdict(self)


CLEAN = Randomization(local_res_spread=(0.0, 0.0), residue_damage_sd=(0.0, 0.0), smooth_damage_sd=(0.0, 0.0),
                      bfactor=(0.0, 0.0), snr=(1e6, 1e6), mask_probability=0.0)


def splat(xyz: np.ndarray, w: np.ndarray, origin: np.ndarray, shape: tuple[int, int, int], vs: float) -> np.ndarray:
    """Trilinear deposition of weighted points onto a [z, y, x] grid."""
    f = (xyz - origin) / vs  # x, y, z fractional indices
    i0 = np.floor(f).astype(np.int64)
    t = f - i0
    out = np.zeros(int(np.prod(shape)), dtype=np.float64)
    nz, ny, nx = shape
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ix, iy, iz = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                wt = w * np.where(dx, t[:, 0], 1 - t[:, 0]) * np.where(dy, t[:, 1], 1 - t[:, 1]) * \
                    np.where(dz, t[:, 2], 1 - t[:, 2])
                ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
                out += np.bincount((iz[ok] * ny + iy[ok]) * nx + ix[ok], wt[ok], minlength=out.size)
    return out.reshape(shape)


def smooth_field(shape: tuple[int, ...], sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-SD smooth Gaussian random field (independent of the structure)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="wrap")
    return (f - f.mean()) / max(f.std(), 1e-12)


def fourier_filter(values: np.ndarray, vs: float, fn) -> np.ndarray:
    """Multiply the spectrum by fn(s) (s = spatial frequency, 1/Å)."""
    ks = [np.fft.fftfreq(n, vs) for n in values.shape[:2]] + [np.fft.rfftfreq(values.shape[2], vs)]
    s2 = ks[0][:, None, None] ** 2 + ks[1][None, :, None] ** 2 + ks[2][None, None, :] ** 2
    return np.fft.irfftn(np.fft.rfftn(values) * fn(np.sqrt(s2)), s=values.shape)


def simulate_map(rec: dict, rng: np.random.Generator, rnd: Randomization = Randomization(),
                 resolution: float | None = None) -> SimMap:
    """One randomized map of the record's ensemble (frames when present, else Debye–Waller blurring)."""
    xyz = np.asarray(rec["xyz"], dtype=np.float64)
    res_index = np.asarray(rec["res_index"])
    n_res = int(res_index.max()) + 1
    r_nom = float(resolution if resolution is not None else rng.uniform(*rnd.resolution))
    vs = float(min(rng.uniform(*rnd.voxel_size), r_nom / 2.2))
    pad = rng.uniform(*rnd.padding, size=3) + 3.0 * np.sqrt(rec["rmsf"].max() ** 2 / 3)
    lo = xyz.min(axis=0) - pad - rng.uniform(0, vs, 3)
    hi = xyz.max(axis=0) + rng.uniform(*rnd.padding, size=3)
    nxyz = np.ceil((hi - lo) / vs).astype(int) + 1
    shape = (int(nxyz[2]), int(nxyz[1]), int(nxyz[0]))
    # intensity: atomic number x per-residue damage x smooth damage x acidic side-chain loss
    z_el = np.array([{"C": 6.0, "N": 7.0, "O": 8.0, "S": 16.0, "SE": 34.0}.get(e, 6.0) for e in rec["element"]])
    dmg_sd = rng.uniform(*rnd.residue_damage_sd)
    w = z_el * np.exp(rng.normal(0, dmg_sd, n_res))[res_index]
    sm_sd = rng.uniform(*rnd.smooth_damage_sd)
    if sm_sd > 0:
        fld = smooth_field(shape, 10.0 / vs, rng)
        w *= np.exp(sm_sd * ndimage.map_coordinates(fld, ((xyz - lo) / vs)[:, ::-1].T, order=1, mode="nearest"))
    acid = np.array([(r, a) in ACIDIC for r, a in zip(np.asarray(rec["res_name"])[res_index], rec["atom_name"])])
    w[acid] *= rng.uniform(0.2, 1.0) if dmg_sd > 0 else 1.0
    # ensemble average at a set of resolutions, blended by a smooth local-resolution field
    spread = rng.uniform(*rnd.local_res_spread)
    levels = [r_nom] if spread <= 0 else [r_nom, r_nom + spread / 2, r_nom + spread]
    frames = rec.get("frames")
    blurred = []
    model_xyz = xyz
    use_frames = frames is not None and len(frames) > 0 and rnd.n_frames > 0
    if use_frames:
        k = min(rnd.n_frames, len(frames))
        if rnd.min_frames is not None and k > rnd.min_frames:
            k = int(rng.integers(rnd.min_frames, k + 1))
        sel = rng.choice(len(frames), k, replace=False)
        model_xyz = xyz + frames[sel].astype(np.float64).mean(axis=0)
        pts = (xyz[None] + frames[sel].astype(np.float64)).reshape(-1, 3)
        base = splat(pts, np.tile(w / k, k), lo, shape, vs)
        for r in levels:
            blurred.append(ndimage.gaussian_filter(base, SIGMA_PER_RESOLUTION * r / vs, mode="constant"))
    else:  # Debye–Waller: bin atoms by RMSF, blur each bin by sqrt(σ_res² + RMSF²/3)
        rmsf = np.asarray(rec["rmsf"], dtype=np.float64)
        rmsf = np.where(np.isfinite(rmsf), rmsf, np.nanmedian(rmsf))
        edges = np.unique(np.quantile(rmsf, np.linspace(0, 1, 9)))
        b = np.clip(np.searchsorted(edges, rmsf, side="right") - 1, 0, max(len(edges) - 2, 0))
        for r in levels:
            acc = np.zeros(shape)
            for k in np.unique(b):
                m = b == k
                s = np.sqrt((SIGMA_PER_RESOLUTION * r) ** 2 + np.mean(rmsf[m] ** 2) / 3.0)
                acc += ndimage.gaussian_filter(splat(xyz[m], w[m], lo, shape, vs), s / vs, mode="constant")
            blurred.append(acc)
    if len(levels) == 1:
        sig = blurred[0]
    else:
        u = ndimage.gaussian_filter(rng.standard_normal(shape), 8.0 / vs, mode="wrap")
        u = (np.argsort(np.argsort(u.ravel())) / (u.size - 1)).reshape(shape) * 2.0  # 0..2, uniform
        a = np.clip(u, 0, 1)
        b2 = np.clip(u - 1, 0, 1)
        sig = (1 - a) * blurred[0] + (a - b2) * blurred[1] + b2 * blurred[2]
    # coloured noise, B-factor, optional low-pass at the nominal resolution, solvent mask
    env = sig > 0.1 * sig.max()
    snr = float(np.exp(rng.uniform(np.log(rnd.snr[0]), np.log(rnd.snr[1]))))
    slope = rng.uniform(*rnd.noise_slope)
    noise = fourier_filter(rng.standard_normal(shape), vs, lambda s: np.maximum(s, 0.01) ** (-slope / 2))
    noise *= sig[env].std() / snr / max(noise.std(), 1e-12)
    m = sig + noise
    bfac = rng.uniform(*rnd.bfactor)
    if bfac != 0:
        m = fourier_filter(m, vs, lambda s: np.exp(-bfac * s * s / 4.0))
    lowpassed = bool(rng.random() < 0.5) and bfac != 0
    if lowpassed:
        m = fourier_filter(m, vs, lambda s: 1.0 / (1.0 + (s * r_nom) ** 8))
    masked = bool(rng.random() < rnd.mask_probability)
    if masked:
        mask = ndimage.gaussian_filter(ndimage.binary_dilation(env, iterations=max(1, int(3.0 / vs))).astype(float),
                                       2.0 / vs)
        m = m * mask
    m = m * np.exp(rng.normal(0, 1)) + rng.normal(0, 0.1) * m.std()
    params = {"resolution": r_nom, "voxel_size": vs, "local_res_spread": spread, "residue_damage_sd": dmg_sd,
              "smooth_damage_sd": sm_sd, "snr": snr, "noise_slope": slope, "bfactor": bfac, "lowpassed": lowpassed,
              "masked": masked, "source": "frames" if use_frames else "debye_waller"}
    if use_frames:
        params["frames"] = int(k)
    return SimMap(m.astype(np.float32), lo, vs, r_nom, params, model_xyz)


def read_mrc(path) -> tuple[np.ndarray, np.ndarray, float]:
    """(values [z,y,x], xyz_to_ijk 3x4, voxel size) of an MRC map with orthogonal axes."""
    import mrcfile

    from chimerax.defmap.preprocess import grid_transforms
    with mrcfile.open(str(path), permissive=True) as f:
        data = np.asarray(f.data, dtype=np.float32)
        vs = np.array([float(f.voxel_size.x), float(f.voxel_size.y), float(f.voxel_size.z)])
        h = f.header
        order = (int(h.mapc) - 1, int(h.mapr) - 1, int(h.maps) - 1)  # file axis (fast..slow) -> x/y/z
        start = np.array([int(h.nxstart), int(h.nystart), int(h.nzstart)], dtype=np.float64)
        origin = np.array([float(h.origin.x), float(h.origin.y), float(h.origin.z)])
    # reorder to [z, y, x]
    axes_fast_to_slow = list(order)
    perm = [2 - axes_fast_to_slow.index(a) for a in (2, 1, 0)]
    data = np.transpose(data, perm)
    start_xyz = np.empty(3)
    start_xyz[list(order)] = start
    if not origin.any():
        origin = start_xyz * vs
    xyz_to_ijk, _ = grid_transforms(origin, vs)
    return np.ascontiguousarray(data), xyz_to_ijk, float(vs.mean())
