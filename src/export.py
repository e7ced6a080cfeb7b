"""Exports of a structure prediction: per-residue CSV, PDB/mmCIF with the prediction in the B-factor column, profile.

``save x.defattr attrName r:defmap`` needs nothing from here: the attributes are registered, so ChimeraX's own
defattr writer handles them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from chimerax.core.errors import UserError

from .combination import zscore as residue_z


def write_residue_csv(path: str | Path, result) -> int:
    """One row per scored residue: log10 RMSF, RMSF in Å, z-score and, with uncertainty, the residue's SD
    (``recipe.residue_sd``: the calibrated variance head, or the spread over rotations for a model without one);
    with normal modes also the map-only value and the structure prior's log10 value (empty: no C-alpha)."""
    rv = result.residue_values
    z = residue_z(rv)
    sd = result.residue_sd
    nm = result.nma_residue_values
    header = ["structure", "chain", "number", "insertion", "name", "log10_rmsf", "rmsf_angstrom", "z"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header + (["sd"] if sd is not None else []) + (["map_log10_rmsf", "prior_log10"] if nm is not None
                                                                   else []))
        for i, r in enumerate(result.residues):
            row = [result.structure.atomspec, r.chain_id, r.number, r.insertion_code, r.name, f"{rv[i]:.5f}",
                   f"{10 ** rv[i]:.5g}", f"{z[i]:.4f}"]
            row += [f"{sd[i]:.5f}"] if sd is not None else []
            row += [f"{result.map_residue_values[i]:.5f}", "" if np.isnan(nm[i]) else f"{nm[i]:.5f}"] \
                if nm is not None else []
            w.writerow(row)
    return len(rv)


def bfactor_values(result, bfactor: str = "value") -> np.ndarray:
    """Per-atom B-factor column for the whole structure: each atom gets its residue's value, unscored atoms 0."""
    s = result.structure
    vals = result.residue_values if bfactor == "value" else residue_z(result.residue_values)
    idx = result.residues.indices(s.atoms.residues)
    out = np.zeros(s.num_atoms, dtype=np.float64)
    ok = idx >= 0
    out[ok] = vals[idx[ok]]
    return out


def save_structure_file(session, result, path: str | Path, bfactor: str = "value") -> None:
    """PDB or mmCIF (by suffix) with the prediction in the B-factor column; the model's own B-factors are restored."""
    path = str(Path(path).expanduser())
    low = path.lower()
    if not low.endswith((".pdb", ".ent", ".cif", ".mmcif")):
        raise UserError(f"saveStructure needs a .pdb or .cif file name, not {Path(path).name}")
    s = result.structure
    atoms = s.atoms
    original = atoms.bfactors.copy()
    try:
        atoms.bfactors = bfactor_values(result, bfactor).astype(np.float32)
        if low.endswith((".pdb", ".ent")):
            from chimerax.pdb import save_pdb
            save_pdb(session, path, models=[s])
        else:
            from chimerax.mmcif import mmcif_write
            mmcif_write.write_mmcif(session, path, models=[s])
    except OSError as e:
        raise UserError(f"Could not write {path}: {e}") from None
    finally:
        atoms.bfactors = original


def output_path(path: str | Path) -> Path:
    """Expand ~ and create missing parent folders, so batch scripts can write into a fresh output folder."""
    p = Path(path).expanduser()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"Cannot create folder {p.parent}: {e.strerror or e}") from None
    return p


def write_outputs(session, result, profile=None, save_csv=None, save_structure=None, bfactor="value") -> None:
    """The optional files of one ``defmap`` run, recorded in ``result.files`` (and so in returnJson)."""
    log = session.logger
    if save_csv:
        try:
            n = write_residue_csv(output_path(save_csv), result)
        except OSError as e:
            raise UserError(f"Could not write {save_csv}: {e}") from None
        result.files["csv"] = str(save_csv)
        log.info(f"DEFMap: wrote {n} residues to {save_csv}")
    if save_structure:
        save_structure_file(session, result, output_path(save_structure), bfactor)
        result.files["structure"] = str(save_structure)
        what = "log10 RMSF" if bfactor == "value" else "z-normalized log10 RMSF"
        log.info(f"DEFMap: wrote {result.structure} with {what} in the B-factor column to {save_structure}")
    if profile:
        from . import profile_plot as dm_profile
        try:
            dm_profile.write_profile(session, result, output_path(profile))
        except OSError as e:
            raise UserError(f"Could not write {profile}: {e}") from None
        result.files["profile"] = str(profile)
