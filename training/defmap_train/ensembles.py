"""Conformational ensembles and per-atom RMSF labels, three sources in one record format.

A cryo-EM map is an average over the conformations of the particles that went into it, so the label we learn is the
spread of that ensemble.  Sources:
* ``anm_record``: normal modes of an anisotropic network model (ANM) of the structure, conformers sampled at a
  temperature (the default for the shipped models; MD at < 1 ns/day on 2 CPU cores cannot make labels here);
* ``run_openmm`` + ``record_from_trajectory``: real MD (OpenMM) or any trajectory mdtraj reads;
* ``record_from_xvg`` / ``record_from_residue_table``: published RMSF without trajectories (DEFMap's GROMACS rmsf.xvg
  lists, ATLAS/mdCATH per-residue tables); maps for these use Debye–Waller blurring, see maps.py.

Record = dict of arrays saved with ``save_record``: xyz, element, atom_name, res_index, res_label, res_name, rmsf (Å per
atom), frames (F, N, 3) float16 displacements from xyz (optional), source, name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from chimerax.defmap.nma import anm_hessian

from .structure import Structure, load_structure

SIDECHAIN_BACKBONE = {"N", "CA", "C", "O", "OXT"}


def anm_modes(ca: np.ndarray, cutoff: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero ANM eigenvalues and eigenvectors (3N, K) for C-alpha nodes (spring constant 1, cutoff in Å)."""
    h = anm_hessian(ca, cutoff)  # the bundle's implementation (chimerax.defmap.nma)
    w, v = np.linalg.eigh(h)
    keep = w > 1e-6 * max(w[-1], 1.0)
    keep[:6] = False  # rigid-body modes (and any disconnected fragment's extra zero modes)
    return w[keep], v[:, keep]


def burial_exposure(xyz: np.ndarray, radius: float = 8.0) -> np.ndarray:
    """0 (buried) … 1 (exposed) from neighbour counts; exposed atoms of side chains move more."""
    counts = np.array([len(x) for x in cKDTree(xyz).query_ball_point(xyz, radius)], dtype=np.float64)
    lo, hi = np.percentile(counts, [10, 90])
    return np.clip((hi - counts) / max(hi - lo, 1.0), 0.0, 1.0)


@dataclass
class Deviations:
    """How far a protein's flexibility departs from its structural (ANM) prior: ranges each protein draws from.

    All amplitude changes are log10 factors on a residue's whole motion (C-alpha and side chain): a smooth random field
    along the chain plus one smooth in space (over C-alpha positions), extra-mobile segments (loops, termini: graded
    toward the free end), stiffened segments, and with ``rock_probability`` a rigid-body rocking of one part (a
    sequence-contiguous domain or, for multi-chain structures, one chain) about its interface with the rest.  None of
    these are a function of the structure, so only the map can show them.  Two motions are not harmonic, as in MD:
    the rocking is an exact rotation (flexible parts trace arcs, so their mean positions sit off the density), and with
    ``jump_probability`` a mobile segment or terminus hops between two substates (its mean position lies between two
    density lobes).  A model fitted into such a map sits at those mean positions.
    """

    chain_sd: tuple[float, float] = (0.05, 0.22)  # log10 SD of the along-chain field
    chain_length: tuple[float, float] = (3.0, 15.0)  # residues (Gaussian correlation length)
    space_sd: tuple[float, float] = (0.0, 0.15)
    space_length: tuple[float, float] = (6.0, 15.0)  # Å
    mobile_segments: tuple[int, int] = (0, 3)
    mobile_length: tuple[int, int] = (3, 14)
    mobile_log10: tuple[float, float] = (0.15, 0.5)
    terminus_probability: float = 0.5
    terminus_length: tuple[int, int] = (2, 12)
    terminus_log10: tuple[float, float] = (0.1, 0.5)
    stiff_segments: tuple[int, int] = (0, 2)
    stiff_length: tuple[int, int] = (5, 20)
    stiff_log10: tuple[float, float] = (-0.3, -0.1)
    jump_probability: float = 0.5  # per mobile segment or terminus: it also hops between two substates
    jump_angstrom: tuple[float, float] = (0.8, 2.5)  # half the distance between the two substates
    rock_probability: float = 0.5
    rock_degrees: tuple[float, float] = (1.5, 8.0)  # SD of the rocking rotation (per axis; applied exactly)
    rock_shift: tuple[float, float] = (0.0, 0.5)  # Å, SD of the rigid translation (per axis)
    strength: tuple[float, float] = (0.3, 1.0)  # per-protein factor on all of the above (some stay near ANM)
    anm_exponent: tuple[float, float] = (1.0, 1.6)  # ANM's C-alpha RMSF profile raised to this power (MD's range
    # of log RMSF over residues is wider than ANM's at the same correlation)
    mean_ca_rmsf: tuple[float, float] = (0.5, 3.5)  # Å, log-uniform: ATLAS 300 K (0.7-2.3) to mdCATH 320 K (up to 3.8)


NO_DEVIATIONS = None


def _smooth_1d(n: int, length: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d
    f = gaussian_filter1d(rng.standard_normal(n + 6 * int(length) + 2), length, mode="wrap")[:n]
    return (f - f.mean()) / max(f.std(), 1e-12)


def _smooth_space(ca: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-SD random field over points, smooth on `length` Å (random Fourier features of a Gaussian kernel)."""
    k = rng.standard_normal((64, 3)) / length
    ph = rng.uniform(0, 2 * np.pi, 64)
    f = np.cos(ca @ k.T + ph).sum(axis=1)
    return (f - f.mean()) / max(f.std(), 1e-12)


def _segment(n: int, length_range, rng: np.random.Generator) -> slice:
    ln = int(min(n, rng.integers(length_range[0], length_range[1] + 1)))
    s = int(rng.integers(0, max(1, n - ln + 1)))
    return slice(s, s + ln)


def deviation_fields(st: Structure, ca: np.ndarray, dev: Deviations, rng: np.random.Generator) -> tuple[
        np.ndarray, dict | None, list[np.ndarray], dict]:
    """(log10 amplitude factor per residue, rocking part or None, two-substate jumps as per-residue (n, 3) half-
    displacements, a JSON-able description)."""
    n = len(ca)
    # chain breaks: fields and segments run per chain
    chains = np.asarray(st.chain_of_res)
    logf = np.zeros(n)
    info: dict = {"segments": []}
    jumps: list[np.ndarray] = []

    def maybe_jump(sel: np.ndarray, weight: np.ndarray) -> None:
        if rng.random() < dev.jump_probability:
            d = rng.standard_normal(3)
            d *= rng.uniform(*dev.jump_angstrom) / np.linalg.norm(d)
            j = np.zeros((n, 3))
            j[sel] = weight[:, None] * d[None]
            jumps.append(j)
            info["segments"].append(["jump", int(np.min(sel)), int(np.max(sel)) + 1,
                                     round(float(np.linalg.norm(d)), 3)])

    csd = rng.uniform(*dev.chain_sd)
    ssd = rng.uniform(*dev.space_sd)
    logf += ssd * _smooth_space(ca, rng.uniform(*dev.space_length), rng)
    for c in dict.fromkeys(chains.tolist()):
        idx = np.flatnonzero(chains == c)
        m = len(idx)
        if m < 4:
            continue
        logf[idx] += csd * _smooth_1d(m, rng.uniform(*dev.chain_length), rng)
        for end in (0, 1):
            if rng.random() < dev.terminus_probability:
                ln = int(min(m, rng.integers(dev.terminus_length[0], dev.terminus_length[1] + 1)))
                ramp = np.linspace(1.0, 0.0, ln + 1)[:-1] * rng.uniform(*dev.terminus_log10)
                sel = idx[:ln] if end == 0 else idx[::-1][:ln]
                logf[sel] += ramp
                info["segments"].append(["terminus", str(c), int(end)])
                maybe_jump(sel, ramp / ramp.max())
    for kind, nrange, lrange, arange in (("mobile", dev.mobile_segments, dev.mobile_length, dev.mobile_log10),
                                         ("stiff", dev.stiff_segments, dev.stiff_length, dev.stiff_log10)):
        for _ in range(int(rng.integers(nrange[0], nrange[1] + 1))):
            sl = _segment(n, lrange, rng)
            amp = rng.uniform(*arange)
            w = np.sin(np.linspace(0, np.pi, sl.stop - sl.start + 2)[1:-1]) ** 0.5  # soft edges
            logf[sl] += amp * w
            info["segments"].append([kind, int(sl.start), int(sl.stop), round(float(amp), 3)])
            if kind == "mobile":
                maybe_jump(np.arange(sl.start, sl.stop), w)
    rock = None
    if n >= 40 and rng.random() < dev.rock_probability:
        uniq = list(dict.fromkeys(chains.tolist()))
        if len(uniq) > 1 and rng.random() < 0.5:
            part = chains == uniq[int(rng.integers(len(uniq)))]  # a whole subunit
        else:
            cut = int(rng.integers(int(0.3 * n), int(0.7 * n) + 1))
            part = np.arange(n) >= cut if rng.random() < 0.5 else np.arange(n) < cut
        if 10 <= part.sum() <= n - 10:
            d = np.linalg.norm(ca[part][:, None] - ca[~part][None], axis=2).min(axis=1)
            hinge = ca[part][d <= max(8.0, np.quantile(d, 0.1))].mean(axis=0)
            rock = {"residues": part, "pivot": hinge, "sigma": np.deg2rad(rng.uniform(*dev.rock_degrees)),
                    "shift": rng.uniform(*dev.rock_shift)}
            info["rock"] = {"residues": int(part.sum()), "degrees": float(np.rad2deg(rock["sigma"])),
                            "shift": float(rock["shift"])}
    k = rng.uniform(*dev.strength)
    logf *= k
    if rock is not None:
        rock["sigma"] *= k
        rock["shift"] *= k
    jumps = [j * k for j in jumps]
    info.update({"chain_sd": float(csd), "space_sd": float(ssd), "strength": float(k)})
    return logf, rock, jumps, info


def anm_record(st: Structure, rng: np.random.Generator, mean_ca_rmsf: float | None = None, n_frames: int = 100,
               cutoff: float = 15.0, deviations: Deviations | None = NO_DEVIATIONS) -> dict:
    """Normal-mode ensemble: residues move with their C-alpha (ANM at a temperature), side chains add local motion.

    The temperature is set through ``mean_ca_rmsf`` (Å): the ANM's kT/γ is scaled so the mean C-alpha RMSF equals it
    (drawn log-uniformly when None: 0.5–2 Å, ATLAS's range, for plain ANM labels; ``deviations.mean_ca_rmsf``
    else).  Side-chain atoms get extra isotropic motion growing with distance from the C-alpha and with exposure.
    ``rmsf`` is the exact ensemble value; ``frames`` are samples of the same distribution.
    """
    ca_idx = st.ca_index()
    ca = st.xyz[ca_idx]
    w, v = anm_modes(ca, cutoff)
    msf_ca = (v.reshape(len(ca), 3, -1) ** 2 / w).sum(axis=(1, 2))
    if mean_ca_rmsf is None:
        lo, hi = (0.5, 2.0) if deviations is None else deviations.mean_ca_rmsf
        mean_ca_rmsf = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    scale = (mean_ca_rmsf / np.sqrt(msf_ca).mean()) ** 2  # kT / gamma
    expo = burial_exposure(st.xyz)
    d_ca = np.linalg.norm(st.xyz - ca[st.res_index], axis=1)
    backbone = np.isin(st.atom_name, list(SIDECHAIN_BACKBONE))
    sc_sigma = np.where(backbone, 0.05 + 0.1 * expo, (0.1 + 0.35 * expo) * d_ca / 2.5)  # per-axis Å
    sc_sigma *= np.sqrt(mean_ca_rmsf)  # hotter ensembles move side chains more too
    if deviations is None:
        amp, rock, jumps, dev_info = np.ones(len(ca)), None, [], None
    else:
        logf, rock, jumps, dev_info = deviation_fields(st, ca, deviations, rng)
        gamma = rng.uniform(*deviations.anm_exponent)
        lca = 0.5 * np.log10(msf_ca)
        logf += (gamma - 1.0) * (lca - lca.mean())
        dev_info["anm_exponent"] = float(gamma)
        amp = 10.0 ** logf
    a_atom = amp[st.res_index]
    msf = a_atom ** 2 * (scale * msf_ca[st.res_index] + 3.0 * sc_sigma ** 2)
    if rock is not None:
        in_part = rock["residues"][st.res_index]
        r2 = ((st.xyz - rock["pivot"]) ** 2).sum(axis=1)
        msf = msf + in_part * (2.0 * rock["sigma"] ** 2 * r2 + 3.0 * rock["shift"] ** 2)
    for j in jumps:  # +-j with equal weight: variance |j|^2
        msf = msf + (j ** 2).sum(axis=1)[st.res_index]
    # keep the drawn temperature: rescale so the mean C-alpha RMSF is mean_ca_rmsf again
    g = mean_ca_rmsf / np.sqrt(msf[ca_idx]).mean() if deviations is not None else 1.0
    rmsf = g * np.sqrt(msf)
    frames = None
    if n_frames:
        z = rng.standard_normal((n_frames, len(w)))
        disp_ca = ((z * np.sqrt(scale / w)) @ v.T).reshape(n_frames, len(ca), 3)
        frames = disp_ca[:, st.res_index] + rng.standard_normal((n_frames, len(st.xyz), 3)) * sc_sigma[None, :, None]
        frames *= a_atom[None, :, None]
        if rock is not None:
            om = rng.standard_normal((n_frames, 3)) * rock["sigma"]
            sh = rng.standard_normal((n_frames, 3)) * rock["shift"]
            rel = st.xyz - rock["pivot"]
            turned = np.einsum("fij,nj->fni", Rotation.from_rotvec(om).as_matrix(), rel) - rel[None]  # arcs
            frames += in_part[None, :, None] * (turned + sh[:, None, :])
        for j in jumps:
            frames += rng.choice([-1.0, 1.0], n_frames)[:, None, None] * j[st.res_index][None]
        frames *= g
    rec = _record(st, rmsf, frames, "anm" if deviations is None else "anm_deviations")
    rec["anm"] = json.dumps({"cutoff": cutoff, "mean_ca_rmsf": mean_ca_rmsf, "kT_over_gamma": scale,
                             "deviations": dev_info})
    return rec


def _record(st: Structure, rmsf: np.ndarray, frames: np.ndarray | None, source: str) -> dict:
    rec = {"name": st.name, "source": source, "xyz": st.xyz.astype(np.float32), "element": st.element,
           "atom_name": st.atom_name, "res_index": st.res_index, "res_label": np.asarray(st.res_label),
           "res_name": np.asarray(st.res_name), "bfactor": st.bfactor.astype(np.float32),
           "rmsf": np.asarray(rmsf, dtype=np.float32)}
    if frames is not None:
        rec["frames"] = np.asarray(frames, dtype=np.float16)
    return rec


def record_structure(rec: dict) -> Structure:
    return Structure(str(rec["name"]), np.asarray(rec["xyz"], dtype=np.float64), rec["element"], rec["atom_name"],
                     np.asarray(rec["res_index"]), list(rec["res_name"]), list(rec["res_label"]),
                     np.array([s.split(":")[0] for s in rec["res_label"]]), np.asarray(rec["bfactor"], np.float64))


def save_record(rec: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in rec.items()})


def load_record(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}


# ---------------------------------------------------------------- RMSF tables without trajectories

def read_xvg(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """GROMACS ``gmx rmsf`` output: (atom numbers, RMSF in nm)."""
    rows = [ln.split()[:2] for ln in Path(path).read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith(("#", "@"))]
    a = np.array(rows, dtype=np.float64)
    return a[:, 0].astype(np.int64), a[:, 1]


def record_from_xvg(model_pdb: str | Path, xvg: str | Path, gromacs_pdb: str | Path) -> dict:
    """DEFMap list entry ``pdb map rmsf.xvg gromacs.pdb``: per-atom RMSF (nm, numbered as in gromacs.pdb) transferred
    to the fitted model's heavy atoms by (residue number, atom name)."""
    import gemmi
    num, rmsf_nm = read_xvg(xvg)
    by_serial = dict(zip(num.tolist(), (rmsf_nm * 10.0).tolist()))
    table = {}
    for ch in gemmi.read_structure(str(gromacs_pdb))[0]:
        for res in ch:
            for a in res:
                if a.serial in by_serial:
                    table[(res.seqid.num, a.name)] = by_serial[a.serial]
    st = load_structure(model_pdb)
    resnum = [int("".join(c for c in lab.split(":")[1] if c.isdigit() or c == "-")) for lab in st.res_label]
    rmsf = np.array([table.get((resnum[r], n), np.nan) for r, n in zip(st.res_index, st.atom_name)])
    if np.isfinite(rmsf).mean() < 0.5:
        raise ValueError(f"only {np.isfinite(rmsf).mean():.0%} of {Path(model_pdb).name}'s atoms have an RMSF in "
                         f"{Path(xvg).name}")
    return _record(st, rmsf, None, "gromacs_xvg")


def record_from_residue_table(structure: str | Path, table: str | Path, unit: str = "nm",
                              name: str | None = None) -> dict:
    """Per-residue RMSF (one value per residue in file order, as ATLAS/mdCATH publish C-alpha RMSF), given to every
    heavy atom of the residue."""
    text = Path(table).read_text().replace(",", " ").split()
    vals = np.array([float(t) for t in text if _is_float(t)]) * (10.0 if unit == "nm" else 1.0)
    st = load_structure(structure, name)
    if len(vals) != st.n_res:
        raise ValueError(f"{Path(table).name} has {len(vals)} values but {st.name} has {st.n_res} residues")
    return _record(st, vals[st.res_index], None, "residue_table")


def _is_float(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- MD (OpenMM) and trajectories

def run_openmm(pdb: str | Path, out_dir: str | Path, *, steps: int = 50_000, report_every: int = 500,
               solvent: str = "implicit", platform: str | None = None, temperature: float = 300.0,
               seed: int = 0, max_residues: int | None = None, minimize_iterations: int = 500) -> Path:
    """Prepare (pdbfixer), minimize and run Langevin MD; resumes from out_dir/checkpoint.chk when present.

    Returns the trajectory (DCD; topology out_dir/prepared.pdb).  GPU (CUDA/OpenCL) is used when present.
    ``max_residues`` keeps only the first residues (smoke tests: a few steps of a small fragment).
    """
    import openmm as mm
    from openmm import app, unit
    from pdbfixer import PDBFixer
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prepared, chk, dcd = out / "prepared.pdb", out / "checkpoint.chk", out / "trajectory.dcd"
    if not prepared.exists():
        fixer = PDBFixer(filename=str(pdb))
        fixer.removeHeterogens(keepWater=False)
        fixer.findMissingResidues()
        fixer.missingResidues = {}  # do not build missing loops: keep the deposited model's atoms
        fixer.findNonstandardResidues()
        fixer.replaceNonstandardResidues()
        strip = app.Modeller(fixer.topology, fixer.positions)  # deposited H/D (neutron, NMR) are re-added cleanly
        strip.delete([a for a in strip.topology.atoms() if a.element is not None and a.element.symbol in ("H", "D")])
        if max_residues:
            strip.delete([r for i, r in enumerate(strip.topology.residues()) if i >= max_residues])
        fixer.topology, fixer.positions = strip.topology, strip.positions
        fixer.findMissingAtoms()
        fixer.addMissingAtoms()
        fixer.addMissingHydrogens(7.0)
        ff = _forcefield(solvent)
        modeller = app.Modeller(fixer.topology, fixer.positions)
        if solvent == "explicit":
            modeller.addSolvent(ff, padding=1.0 * unit.nanometer, ionicStrength=0.15 * unit.molar)
        with open(prepared, "w") as f:
            app.PDBFile.writeFile(modeller.topology, modeller.positions, f, keepIds=True)
    pdbf = app.PDBFile(str(prepared))
    ff = _forcefield(solvent)
    method = app.PME if solvent == "explicit" else app.NoCutoff
    system = ff.createSystem(pdbf.topology, nonbondedMethod=method, constraints=app.HBonds,
                             nonbondedCutoff=1.0 * unit.nanometer)
    if solvent == "explicit":
        system.addForce(mm.MonteCarloBarostat(1 * unit.bar, temperature * unit.kelvin))
    integ = mm.LangevinMiddleIntegrator(temperature * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picoseconds)
    integ.setRandomNumberSeed(seed)
    sim = app.Simulation(pdbf.topology, system, integ, _platform(platform))
    done = 0
    if chk.exists():
        sim.loadCheckpoint(str(chk))
        done = sim.currentStep
    else:
        sim.context.setPositions(pdbf.positions)
        sim.minimizeEnergy(maxIterations=minimize_iterations)
        sim.context.setVelocitiesToTemperature(temperature * unit.kelvin, seed)
    remaining = steps - done
    if remaining > 0:
        sim.reporters.append(app.DCDReporter(str(dcd), report_every, append=dcd.exists() and done > 0))
        sim.reporters.append(app.CheckpointReporter(str(chk), report_every))
        sim.step(remaining)
        sim.saveCheckpoint(str(chk))
    return dcd


def _forcefield(solvent: str):
    from openmm import app
    if solvent == "implicit":
        return app.ForceField("amber14-all.xml", "implicit/gbn2.xml")
    if solvent == "explicit":
        return app.ForceField("amber14-all.xml", "amber14/tip3pfb.xml")
    raise ValueError(f"solvent must be implicit or explicit, not {solvent!r}")


def _platform(name: str | None):
    import openmm as mm
    names = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    for want in ([name] if name else ["CUDA", "OpenCL", "CPU"]):
        if want in names:
            return mm.Platform.getPlatformByName(want)
    raise ValueError(f"OpenMM platform {name} is not available (have {', '.join(names)})")


def record_from_trajectory(traj: str | Path, topology: str | Path, name: str | None = None,
                           max_frames: int = 100, skip_fraction: float = 0.0) -> dict:
    """Any trajectory mdtraj reads: protein heavy atoms superposed on the mean, per-atom RMSF, ≤ max_frames frames."""
    import mdtraj as md
    t = md.load(str(traj), top=str(topology))
    sel = t.topology.select("protein and not element H")
    t = t.atom_slice(sel)
    t = t[int(skip_fraction * t.n_frames):]
    t.superpose(t, 0)
    mean = t.xyz.mean(axis=0)
    for _ in range(2):  # iterate superposition onto the mean structure
        ref = md.Trajectory(mean[None], t.topology)
        t.superpose(ref, 0)
        mean = t.xyz.mean(axis=0)
    xyz = mean * 10.0
    disp = t.xyz * 10.0 - xyz[None]
    rmsf = np.sqrt((disp ** 2).sum(axis=2).mean(axis=0))
    top = t.topology
    res_map: dict[int, int] = {}
    res_index, res_label, res_name = [], [], []
    for a in top.atoms:
        r = a.residue
        if r.index not in res_map:
            res_map[r.index] = len(res_label)
            res_label.append(f"{r.chain.chain_id or chr(65 + r.chain.index)}:{r.resSeq}")
            res_name.append(r.name)
        res_index.append(res_map[r.index])
    st = Structure(name or Path(topology).stem, xyz.astype(np.float64),
                   np.array([a.element.symbol.upper() for a in top.atoms]), np.array([a.name for a in top.atoms]),
                   np.array(res_index), res_name, res_label, np.array([s.split(":")[0] for s in res_label]),
                   np.zeros(len(xyz)))
    step = max(1, int(np.ceil(len(disp) / max_frames)))
    return _record(st, rmsf, disp[::step][:max_frames], "md")
