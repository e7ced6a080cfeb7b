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
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

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


def anm_record(st: Structure, rng: np.random.Generator, mean_ca_rmsf: float | None = None, n_frames: int = 100,
               cutoff: float = 15.0) -> dict:
    """Normal-mode ensemble: residues move with their C-alpha (ANM at a temperature), side chains add local motion.

    The temperature is set through ``mean_ca_rmsf`` (Å): the ANM's kT/γ is scaled so the mean C-alpha RMSF equals it
    (drawn log-uniformly in 0.5–2 Å when None, the range ATLAS MD shows).  Side-chain atoms get extra isotropic motion
    growing with distance from the C-alpha and with exposure.  ``rmsf`` is the exact ensemble value; ``frames`` are
    samples of the same distribution.
    """
    ca_idx = st.ca_index()
    ca = st.xyz[ca_idx]
    w, v = anm_modes(ca, cutoff)
    msf_ca = (v.reshape(len(ca), 3, -1) ** 2 / w).sum(axis=(1, 2))
    if mean_ca_rmsf is None:
        mean_ca_rmsf = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    scale = (mean_ca_rmsf / np.sqrt(msf_ca).mean()) ** 2  # kT / gamma
    expo = burial_exposure(st.xyz)
    d_ca = np.linalg.norm(st.xyz - ca[st.res_index], axis=1)
    backbone = np.isin(st.atom_name, list(SIDECHAIN_BACKBONE))
    sc_sigma = np.where(backbone, 0.05 + 0.1 * expo, (0.1 + 0.35 * expo) * d_ca / 2.5)  # per-axis Å
    sc_sigma *= np.sqrt(mean_ca_rmsf)  # hotter ensembles move side chains more too
    rmsf = np.sqrt(scale * msf_ca[st.res_index] + 3.0 * sc_sigma ** 2)
    frames = None
    if n_frames:
        z = rng.standard_normal((n_frames, len(w)))
        disp_ca = ((z * np.sqrt(scale / w)) @ v.T).reshape(n_frames, len(ca), 3)
        frames = disp_ca[:, st.res_index] + rng.standard_normal((n_frames, len(st.xyz), 3)) * sc_sigma[None, :, None]
    rec = _record(st, rmsf, frames, "anm")
    rec["anm"] = json.dumps({"cutoff": cutoff, "mean_ca_rmsf": mean_ca_rmsf, "kT_over_gamma": scale})
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
