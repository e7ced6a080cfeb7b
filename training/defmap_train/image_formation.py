"""Validation maps formed the way cryo-EM forms them: a second map family, independent of the training engine.

The engine's maps (``maps.py``, used by ``validate_md``) blur one model with a Gaussian/Debye-Waller kernel.  Here a
map comes from a different process, so that a model which only learned the engine's quirks is caught out:

1. a conformer ensemble: the MD frames where a chain has them, else an ensemble whose per-residue C-alpha RMSF equals
   the MD RMSF (residues moved rigidly, displacements correlated in space and so along the chain, as real motion is);
2. each conformer's Coulomb potential from electron scattering factors (gemmi ``DensityCalculatorE``);
3. particle images with ASPIRE: random orientations, one conformer per image, CTF per defocus group (300 kV), white
   noise at a low SNR; reconstruction (ASPIRE ``MeanEstimator``, CTF-aware least squares) of two half sets from
   parameters with small orientation and shift errors, as a refinement leaves them;
4. post-processing as deposited maps are made: half-map FSC (0.143 is the map's resolution, what a user would type),
   FSC weighting, global B sharpening from the Guinier slope, low-pass at the resolution, soft mask.

Validation only: training never reads these maps.  Nothing here is shared with the training engine's map code.
Maps are ``values[z, y, x]``; ``origin`` is the PDB-frame position (Å) of voxel (0, 0, 0), the same frame as ``xyz``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .md_reference import MD_DIR, frame_displacements, load_chain, md_chains
from .paths import DEFAULT_DATA, seed_of
from .structure import Structure

CACHE = DEFAULT_DATA / "image_formation"
VARIANTS = ("ensemble", "frames")
VOXEL = 1.5  # Å: Nyquist 3 Å, so the FSC, not the sampling, sets the resolution
BOX_SIZES = (32, 36, 40, 48, 50, 54, 60, 64, 72, 80, 90, 96, 100, 108, 120, 128)  # even, FFT-friendly (2·3·5)
MARGIN = 10.0  # Å between the outermost atom of any conformer and the sphere inscribed in the box
RESIDUE_VOLUME = 133.0  # Å³ per residue (1.21 Å³/Da × 110 Da): sets the mask's core volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What one map's draw ranges are; each map draws its own values inside them (recorded in ``params``)."""

    n_images: tuple[int, int] = (2000, 8000)  # drawn uniformly: with SNR and B this spreads the resolutions
    n_conformers: int = 24  # ensemble variant; the frames variant uses every frame
    snr: tuple[float, float] = (0.05, 0.1)  # per image, signal power of the CTF-filtered projection / noise power
    defocus_um: tuple[float, float] = (1.0, 2.5)
    n_defocus_groups: int = 16
    defocus_error_a: float = 100.0  # Å, RMS error of the defocus the reconstruction uses (CTF estimation)
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    envelope_b: tuple[float, float] = (50.0, 150.0)  # Å², image B (drift, damage, detector): the map's fall-off
    angle_error_deg: tuple[float, float] = (1.5, 3.0)  # RMS rotation error of the parameters used to reconstruct
    shift_error_px: float = 1.0  # RMS length of the 2D shift error (per axis: / √2)
    particle_shift_px: float = 2.0  # RMS per axis of the particles' true off-centring (known up to the error)
    corr_length: tuple[float, float] = (5.0, 10.0)  # Å, spatial correlation length of the synthetic ensemble
    cg_maxiter: int = 30
    box: int | None = None  # voxels; None: the smallest BOX_SIZES that holds every conformer with MARGIN


# ------------------------------------------------------------------ conformers

def conformers(st: Structure, md_rmsf_per_residue: np.ndarray, frames_disp_or_none: np.ndarray | None, n: int,
               rng: np.random.Generator, corr_length: float | None = None) -> np.ndarray:
    """(n, atoms, 3) conformer coordinates.

    With MD frames ((F, atoms, 3) displacements, ``md_reference.frame_displacements``): the frames themselves (n of
    them drawn without replacement; all when n ≥ F).  Without: rigid per-residue translations, Gaussian with a
    spatial kernel exp(-d²/2ℓ²) on the C-alpha distances d (neighbours along the chain and in contact move
    together), centred on the structure and scaled per residue so that the ensemble's C-alpha RMSF (root mean
    square distance from the ensemble mean) equals ``md_rmsf_per_residue`` exactly; the ensemble mean is ``st.xyz``.
    """
    if frames_disp_or_none is not None:
        disp = np.asarray(frames_disp_or_none, dtype=np.float64)
        pick = np.arange(len(disp)) if n >= len(disp) else np.sort(rng.choice(len(disp), n, replace=False))
        return st.xyz[None] + disp[pick]
    target = np.asarray(md_rmsf_per_residue, dtype=np.float64)
    if target.shape != (st.n_res,):
        raise ValueError(f"{st.name}: {target.shape} RMSF values for {st.n_res} residues")
    if n < 2:
        raise ValueError("an ensemble needs at least 2 conformers")
    ell = float(corr_length) if corr_length is not None else 7.5
    ca = st.xyz[st.ca_index()]
    d2 = ((ca[:, None] - ca[None]) ** 2).sum(-1)
    w, v = np.linalg.eigh(np.exp(-d2 / (2 * ell ** 2)))
    factor = v * np.sqrt(np.clip(w, 0.0, None))  # K = factor @ factor.T
    disp = np.einsum("ij,njk->nik", factor, rng.standard_normal((n, st.n_res, 3)))
    disp -= disp.mean(axis=0)
    rms = np.sqrt((disp ** 2).sum(-1).mean(axis=0))
    disp *= (target / np.maximum(rms, 1e-12))[None, :, None]
    return st.xyz[None] + disp[:, st.res_index]


def ca_rmsf(st: Structure, conf_xyz: np.ndarray) -> np.ndarray:
    """Per-residue C-alpha RMSF of an ensemble about its mean (Å)."""
    ca = conf_xyz[:, st.ca_index()]
    return np.sqrt(((ca - ca.mean(axis=0)) ** 2).sum(-1).mean(axis=0))


# ------------------------------------------------------------------ potential

def box_for(conf_xyz: np.ndarray, center: np.ndarray, voxel: float = VOXEL) -> int:
    """Smallest FFT-friendly box whose inscribed sphere holds every conformer with MARGIN: projections of a rotated
    box are periodic, so nothing may stick out of that sphere."""
    r = float(np.linalg.norm(conf_xyz - center, axis=-1).max()) + MARGIN
    for L in BOX_SIZES:
        if L * voxel / 2 >= r:
            return L
    raise ValueError(f"a box of radius {r:.0f} Å exceeds {BOX_SIZES[-1]} voxels of {voxel} Å")


class Potential:
    """Electron-scattering-factor potential (gemmi ``DensityCalculatorE``) of conformers on one cubic grid.

    gemmi adds a blur (Refmac's rule for a grid of this spacing) so that its Gaussians are sampled without
    aliasing; it is taken out again in Fourier space inside the Nyquist sphere, so the potential is that of point
    atoms band-limited to the grid, and the image envelope B is the one documented blur of the map."""

    def __init__(self, elements: np.ndarray, L: int, voxel: float, origin: np.ndarray):
        import gemmi
        self.L, self.voxel, self.origin = L, voxel, np.asarray(origin, dtype=np.float64)
        a = L * voxel
        self.st = gemmi.Structure()
        self.st.cell = gemmi.UnitCell(a, a, a, 90, 90, 90)
        self.st.spacegroup_hm = "P 1"
        model, chain, res = gemmi.Model("1"), gemmi.Chain("A"), gemmi.Residue()
        res.name, res.seqid = "UNK", gemmi.SeqId(1, " ")
        for e in elements:
            atom = gemmi.Atom()
            atom.element, atom.occ, atom.b_iso = gemmi.Element(str(e)), 1.0, 0.0
            res.add_atom(atom)
        chain.add_residue(res)
        model.add_chain(chain)
        self.st.add_model(model)
        self.dc = gemmi.DensityCalculatorE()
        self.dc.d_min, self.dc.rate = 2 * voxel, 1.0  # grid spacing = d_min / (2 rate) = voxel
        self.dc.set_grid_cell_and_spacegroup(self.st)
        self.dc.set_refmac_compatible_blur(self.st[0])
        f = [np.fft.fftfreq(L, voxel)] * 2 + [np.fft.rfftfreq(L, voxel)]
        s2 = sum(g ** 2 for g in np.meshgrid(*f, indexing="ij", sparse=True))
        self.unblur = np.where(s2 <= (0.5 / voxel) ** 2, np.exp(self.dc.blur * s2 / 4), 0.0)

    def __call__(self, xyz: np.ndarray) -> np.ndarray:
        """Potential of one conformer (PDB-frame Å) as float32 [z, y, x]."""
        import gemmi
        for atom, p in zip(self.st[0][0][0], np.asarray(xyz, dtype=np.float64) - self.origin):
            atom.pos = gemmi.Position(*p)
        self.dc.put_model_density_on_grid(self.st[0])
        g = np.array(self.dc.grid, copy=True)  # [x, y, z]
        if g.shape != (self.L,) * 3:
            raise RuntimeError(f"gemmi grid {g.shape}, expected {self.L}³")
        g = np.fft.irfftn(np.fft.rfftn(g) * self.unblur, g.shape)
        return np.ascontiguousarray(g.transpose(2, 1, 0), dtype=np.float32)


# ------------------------------------------------------------------ ASPIRE

def _aspire():
    """Import ASPIRE without its import-time side effects: it writes a ``logs/`` folder into the working directory,
    takes over the root logger (DEBUG, to stdout) and replaces ``sys.excepthook``.  A user config in the cache
    (``ASPIREDIR``) moves its logs there and quiets them; the root logger and excepthook are put back."""
    import sys
    if "aspire" not in sys.modules:
        cfg = CACHE / "aspire_config"
        cfg.mkdir(parents=True, exist_ok=True)
        (cfg / "config.yaml").write_text(
            "logging:\n"
            f"    log_dir: {(CACHE / 'aspire_logs').as_posix()}\n"
            "    log_exceptions: 0\n    tqdm_disable: True\n"
            "    console_level: WARNING\n    log_file_level: WARNING\n")
        os.environ.setdefault("ASPIREDIR", str(cfg))
        root = logging.getLogger()
        state = (root.level, list(root.handlers), sys.excepthook,
                 {k: v.disabled for k, v in logging.root.manager.loggerDict.items() if isinstance(v, logging.Logger)})
        import aspire  # noqa: F401
        root.setLevel(state[0])
        for h in list(root.handlers):
            if h not in state[1]:
                root.removeHandler(h)
                h.close()
        sys.excepthook = state[2]
        for k, disabled in state[3].items():
            logging.getLogger(k).disabled = disabled
        logging.getLogger("aspire").setLevel(logging.ERROR)  # CG stopping at maxiter is intended
    import aspire
    return aspire


def _soft_mask(vol: np.ndarray, n_res: int, voxel: float, dilate: float = 6.0, edge: float = 6.0) -> np.ndarray:
    """Soft molecular mask, as deposited maps are masked: the n_res·RESIDUE_VOLUME highest voxels of the map
    low-passed to 15 Å, dilated by ``dilate`` Å, with a raised-cosine edge ``edge`` Å wide."""
    from scipy import ndimage
    smooth = _lowpass(vol, voxel, 15.0, width=0.0)
    n_core = int(min(vol.size - 1, max(1, round(n_res * RESIDUE_VOLUME / voxel ** 3))))
    core = smooth >= np.partition(smooth.ravel(), -n_core)[-n_core]
    dist = ndimage.distance_transform_edt(~core) * voxel
    return np.where(dist <= dilate, 1.0,
                    np.where(dist <= dilate + edge, 0.5 * (1 + np.cos(np.pi * (dist - dilate) / edge)), 0.0))


def _radius(shape: tuple[int, ...]) -> np.ndarray:
    """Fourier radius in shells (index units) on an rfftn grid."""
    L = shape[0]
    f = [np.fft.fftfreq(L) * L] * 2 + [np.fft.rfftfreq(L) * L]
    return np.sqrt(sum(g ** 2 for g in np.meshgrid(*f, indexing="ij", sparse=True)))


def _lowpass(vol: np.ndarray, voxel: float, resolution: float, width: float = 1.0) -> np.ndarray:
    """Low-pass at ``resolution`` Å with a raised-cosine edge ``width`` shells wide on either side."""
    L = vol.shape[0]
    r, rc = _radius(vol.shape), L * voxel / resolution
    if width > 0:
        h = np.clip((r - (rc - width)) / (2 * width), 0.0, 1.0)
        filt = 0.5 * (1 + np.cos(np.pi * h))
    else:
        filt = np.exp(-0.5 * (r / rc) ** 2)  # smooth (Gaussian) low-pass for masks
    return np.fft.irfftn(np.fft.rfftn(vol) * filt, vol.shape)


def guinier_b(vol: np.ndarray, voxel: float, resolution: float, low: float = 10.0) -> float:
    """Global B (Å²) from the slope of ln(radial mean |F|) against s² between ``low`` Å and the resolution (|F| ∝
    exp(-B s²/4)); the window starts at 15 Å where 10 Å leaves fewer than 3 shells.  Positive: the map is blurred."""
    L = vol.shape[0]
    r = np.rint(_radius(vol.shape)).astype(int)
    amp = np.bincount(r.ravel(), np.abs(np.fft.rfftn(vol)).ravel()) / np.maximum(np.bincount(r.ravel()), 1)
    hi = int(np.floor(L * voxel / resolution))
    for lo_res in (low, 15.0, 20.0):
        lo = int(np.ceil(L * voxel / lo_res))
        if hi - lo + 1 >= 3:
            break
    k = np.arange(max(lo, 1), hi + 1)
    k = k[amp[k] > 0]
    if len(k) < 3:
        return 0.0
    s2 = (k / (L * voxel)) ** 2
    slope = np.polyfit(s2, np.log(amp[k]), 1)[0]
    return float(-4 * slope)


def form_map(conf_xyz: np.ndarray, elements: np.ndarray, fitted_xyz: np.ndarray, n_res: int,
             rng: np.random.Generator, settings: Settings = Settings()) -> dict:
    """A post-processed reconstruction of particle images of the conformers.

    Returns ``values`` (float32 [z, y, x]), ``origin`` (PDB-frame Å of voxel (0, 0, 0)), ``voxel_size``,
    ``resolution`` (half-map FSC 0.143, Å), ``params`` (dict of what was drawn) and ``truth`` (the mean conformer
    potential on the same grid, unfiltered, for checks)."""
    aspire = _aspire()
    from aspire.noise import WhiteNoiseAdder
    from aspire.operators import CTFFilter
    from aspire.reconstruction import MeanEstimator
    from aspire.source import Simulation
    from aspire.volume import Volume
    from scipy.spatial.transform import Rotation

    t0 = time.perf_counter()
    s = settings
    voxel = VOXEL
    center = (fitted_xyz.min(axis=0) + fitted_xyz.max(axis=0)) / 2
    L = s.box or box_for(conf_xyz, center, voxel)
    origin = center - (L // 2) * voxel  # ASPIRE rotates about voxel L/2 (even L)
    pot = Potential(elements, L, voxel, origin)
    vols = np.stack([pot(x) for x in conf_xyz])
    truth = vols.mean(axis=0)

    n = int(rng.integers(s.n_images[0], s.n_images[1] + 1))
    snr = float(rng.uniform(*s.snr))
    env_b = float(rng.uniform(*s.envelope_b))
    ang_err = float(rng.uniform(*s.angle_error_deg))
    defocus = rng.uniform(*s.defocus_um, size=s.n_defocus_groups) * 1e4  # Å
    astig = rng.uniform(0, 300, size=s.n_defocus_groups)  # Å
    # ASPIRE's CTF envelope is exp(-B s²) with s in 1/nm; exp(-B_Å² s²/4) with s in 1/Å is B = B_Å² / 400
    filters = [CTFFilter(voltage=s.voltage_kv, defocus_u=d + a / 2, defocus_v=d - a / 2,
                         defocus_ang=float(rng.uniform(0, np.pi)), Cs=s.cs_mm, alpha=s.amplitude_contrast,
                         B=env_b / 400.0) for d, a in zip(defocus, astig)]
    seed = int(rng.integers(2 ** 31 - 1))
    draw = dict(n=n, vols=Volume(vols, pixel_size=voxel),
                states=rng.integers(1, len(vols) + 1, size=n),  # ASPIRE's states are 1-based (vols[state - 1])
                unique_filters=filters, filter_indices=rng.integers(0, len(filters), size=n),
                offsets=rng.normal(0, s.particle_shift_px, size=(n, 2)).astype(np.float32),
                amplitudes=np.ones(n, dtype=np.float32), seed=seed)
    # signal power from a sample of clean images (ASPIRE would project every image once more for it)
    power = Simulation(**draw).true_signal_power(sample_n=min(n, 1024), batch_size=1024)
    sim = Simulation(**draw, noise_adder=WhiteNoiseAdder.from_snr(snr, signal_power=power, seed=seed + 1))
    src = sim.cache(batch_size=n)  # one batch: one NUFFT plan per conformer
    rot_err = Rotation.from_rotvec(rng.normal(0, np.deg2rad(ang_err) / np.sqrt(3), size=(n, 3)))
    used_rot = np.einsum("nij,njk->nik", src.rotations, rot_err.as_matrix()).astype(np.float32)
    used_off = src.offsets + rng.normal(0, s.shift_error_px / np.sqrt(2), size=(n, 2))
    src = src.update(rotations=used_rot, offsets=used_off)
    # the CTFs the reconstruction knows are estimated ones: defocus off by a little, and no envelope (CTF fitting
    # does not see it), so the envelope stays in the map for the sharpening to find, as in real data
    src.unique_filters = [CTFFilter(voltage=f.voltage, defocus_u=f.defocus_u + e, defocus_v=f.defocus_v + e,
                                    defocus_ang=f.defocus_ang, Cs=f.Cs, alpha=f.alpha, B=0.0)
                          for f, e in zip(filters, rng.normal(0, s.defocus_error_a, size=len(filters)))]
    order = rng.permutation(n)
    halves = []
    with tempfile.TemporaryDirectory() as tmp:  # ASPIRE writes a checkpoint when CG stops at maxiter
        for idx in (np.sort(order[: n // 2]), np.sort(order[n // 2:])):
            est = MeanEstimator(src[idx], batch_size=1024, preconditioner="circulant", checkpoint_iterations=None,
                                checkpoint_prefix=str(Path(tmp) / "cg"), maxiter=s.cg_maxiter)
            halves.append(np.asarray(est.estimate().asnumpy()[0], dtype=np.float64))
    t_rec = time.perf_counter() - t0

    h1, h2 = halves
    mask = _soft_mask(h1 + h2, n_res, voxel)
    res_a, fsc = Volume((h1 * mask).astype(np.float32), pixel_size=voxel).fsc(
        Volume((h2 * mask).astype(np.float32), pixel_size=voxel), cutoff=0.143)
    resolution = float(np.ravel(res_a)[0])
    fsc = np.ravel(fsc)  # fsc[i]: the shell of radius i + 1 (ASPIRE)
    if not np.isfinite(resolution):
        raise RuntimeError(f"FSC below 0.143 from the first shell: {fsc[:4]}")
    fsc_r = np.concatenate([[1.0], np.clip(fsc, 0.0, 1.0), [0.0]])
    full = (h1 + h2) / 2
    r = _radius(full.shape)
    weight = np.sqrt(2 * fsc_r / (1 + fsc_r))[np.minimum(np.rint(r).astype(int), len(fsc_r) - 1)]
    full = np.fft.irfftn(np.fft.rfftn(full) * weight, full.shape)  # FSC weighting (as RELION's post-processing)
    b_est = guinier_b(full * mask, voxel, resolution)
    b_sharp = float(np.clip(b_est, 0.0, 300.0))
    s2 = (r / (L * voxel)) ** 2
    full = np.fft.irfftn(np.fft.rfftn(full) * np.exp(b_sharp * s2 / 4), full.shape)
    values = (_lowpass(full, voxel, resolution) * mask).astype(np.float32)
    cc = float(np.corrcoef(values.ravel(), (_lowpass(truth, voxel, resolution) * mask).ravel())[0, 1])
    params = {"engine": "image_formation", "aspire": aspire.__version__, "box": L, "voxel_size": voxel,
              "conformers": len(vols), "images": n, "snr": snr, "defocus_um": [float(defocus.min() / 1e4),
              float(defocus.max() / 1e4)], "defocus_groups": s.n_defocus_groups,
              "defocus_error_a": s.defocus_error_a, "voltage_kv": s.voltage_kv,
              "cs_mm": s.cs_mm, "amplitude_contrast": s.amplitude_contrast, "envelope_b": env_b,
              "angle_error_deg": ang_err, "shift_error_px": s.shift_error_px,
              "particle_shift_px": s.particle_shift_px, "guinier_b": b_est, "sharpen_b": b_sharp,
              "resolution": resolution, "fsc": [round(float(x), 4) for x in fsc], "cc_truth": cc,
              "seconds_reconstruction": t_rec, "seconds": time.perf_counter() - t0}
    return {"values": values, "origin": origin, "voxel_size": voxel, "resolution": resolution,
            "params": params, "truth": truth}


# ------------------------------------------------------------------ maps of the md_reference chains

def image_formation_map(name: str, variant: str, k: int, cache: Path = CACHE, settings: Settings | None = None,
                        md_dir: Path = MD_DIR) -> dict | None:
    """One image-formation map of an md_reference chain, with the keys of validate_md's engine maps (values,
    origin, voxel_size, resolution, xyz, variant, k, params); None for ``frames`` on a chain without frames.
    Cached as ``<name>__<variant><k>.npz``; drawn from ``seed_of("image-formation", name, variant, k)``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: one of {VARIANTS}")
    f = Path(cache) / f"{name}__{variant}{k}.npz"
    if not f.exists():
        st, md = load_chain(md_dir, name)
        disp = frame_displacements(st, Path(md_dir) / "frames" / name)
        if variant == "frames" and disp is None:
            return None
        s = settings or Settings()
        rng = np.random.default_rng(seed_of("image-formation", name, variant, k))
        if variant == "frames":
            conf, fitted, ell = conformers(st, md, disp, len(disp), rng), st.xyz + disp.mean(axis=0), None
        else:
            ell = float(rng.uniform(*s.corr_length))
            conf, fitted = conformers(st, md, None, s.n_conformers, rng, corr_length=ell), st.xyz
        m = form_map(conf, st.element, fitted, st.n_res, rng, s)
        m["params"].update(name=name, variant=variant, k=k, corr_length=ell)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.stem}.{os.getpid()}.npz")  # atomic: a reader never sees half a file
        np.savez(tmp, values=m["values"], origin=m["origin"], voxel_size=m["voxel_size"],
                 resolution=m["resolution"], xyz=fitted, variant=variant, k=k, params=json.dumps(m["params"]))
        os.replace(tmp, f)
    with np.load(f) as z:
        return {"values": z["values"].astype(np.float32), "origin": z["origin"].astype(np.float64),
                "voxel_size": float(z["voxel_size"]), "resolution": float(z["resolution"]),
                "xyz": z["xyz"].astype(np.float64), "variant": str(z["variant"]), "k": int(z["k"]),
                "params": str(z["params"])}


def make_all(names: list[str] | None = None, variants: tuple[str, ...] = VARIANTS, k: int = 1,
             cache: Path = CACHE, settings: Settings | None = None) -> None:
    """Fill the cache: ``k`` maps (indices 0..k-1) per chain and variant, for all md_reference chains by default.
    Prints one line per map (name, variant, k, box, resolution, B, correlation with the true mean potential,
    seconds) so a background run can be followed."""
    for name in names or md_chains():
        for variant in variants:
            for i in range(k):
                cached = (Path(cache) / f"{name}__{variant}{i}.npz").exists()
                t = time.perf_counter()
                try:
                    m = image_formation_map(name, variant, i, cache=cache, settings=settings)
                except Exception as e:  # one chain's failure should not stop the others
                    print(f"{name} {variant}{i} FAILED {type(e).__name__}: {e}", flush=True)
                    continue
                if m is None:
                    print(f"{name} {variant}{i} skipped (no frames)", flush=True)
                    continue
                p = json.loads(m["params"])
                print(f"{name} {variant}{i} box {p['box']} conformers {p['conformers']} images {p['images']} "
                      f"snr {p['snr']:.3f} resolution {m['resolution']:.2f} A guinier_b {p['guinier_b']:.0f} "
                      f"cc_truth {p['cc_truth']:.3f} seconds {p['seconds']:.0f}"
                      f"{' (cached)' if cached else f' wall {time.perf_counter() - t:.0f}'}", flush=True)


__all__ = ["Settings", "conformers", "ca_rmsf", "form_map", "image_formation_map", "make_all"]
