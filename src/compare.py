"""``defmap compare``: apo/holo (or any two-state) comparison of predicted dynamics (DEFMap Fig 6A–C).

Both maps are scored with the same model, residues are matched by chain and number (or by sequence alignment when
the two models are numbered differently), and the per-residue difference second − first is stored, colored and
summarized around a ligand or partner: mean ± SD in each state and a Welch t-test, as in the paper's binding-site
comparison.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from chimerax.core.commands import BoolArg, CmdDesc, ColormapArg, ColormapRangeArg, EnumOf, StringArg
from chimerax.core.errors import UserError

from .args import DistanceArg, MapResolutionArg
from .export import output_path
from .keylabels import tidy_key
from .palette import no_value_color
from .predict import StructureResult, predict_structure
from .progress import Progress

DIFF_PALETTE = "blue-white-red"  # diverging: blue = more rigid in the second state, red = more flexible
THREE_TO_ONE = {"ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
                "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
                "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V", "MSE": "M", "SEC": "U", "PYL": "O", "HID": "H",
                "HIE": "H", "HIP": "H", "CYX": "C"}
# what matchmaker uses by default (chimerax.match_maker.settings)
ALIGN_MATRIX, ALIGN_GAP_OPEN, ALIGN_GAP_EXTEND = "BLOSUM-62", 12.0, 1.0


@dataclass
class ChainMatch:
    chain1: str
    chain2: str
    method: str  # "number" or "alignment"
    pairs: int
    identity: float


@dataclass
class CompareResult:
    first: StructureResult
    second: StructureResult
    residues1: list
    residues2: list
    values1: np.ndarray
    values2: np.ndarray
    diff: np.ndarray
    site: np.ndarray  # bool per matched pair
    site_source: str
    stats: dict
    chains: list[ChainMatch]
    normalized: bool
    attribute: str = "defmap_diff"
    files: dict = field(default_factory=dict)
    first_map: str = ""
    second_map: str = ""

    def as_dict(self) -> dict:
        def num(x):
            return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
        return {"first": {"map": self.first_map, "structure": self.first.structure.atomspec},
                "second": {"map": self.second_map, "structure": self.second.structure.atomspec},
                "model": self.first.model.name, "attribute": self.attribute, "normalized": self.normalized,
                "site": self.site_source, "stats": {k: num(v) for k, v in self.stats.items()}, "files": self.files,
                "chains": [vars(c) for c in self.chains],
                "residues": [{"chain1": r1.chain_id, "number1": int(r1.number), "name1": r1.name,
                              "chain2": r2.chain_id, "number2": int(r2.number), "name2": r2.name,
                              "first": float(a), "second": float(b), "diff": float(d), "site": bool(s)}
                             for r1, r2, a, b, d, s in zip(self.residues1, self.residues2, self.values1,
                                                           self.values2, self.diff, self.site)]}


def _key(r) -> tuple[int, str]:
    return int(r.number), r.insertion_code


def _by_chain(residues, values) -> dict[str, list[tuple[object, float]]]:
    """Polymer residues with a value, per chain, in residue order (ligands and waters are never matched)."""
    out: dict[str, list] = {}
    for r, v in zip(residues, values):
        if r.polymer_type != 0:
            out.setdefault(r.chain_id, []).append((r, float(v)))
    for items in out.values():
        items.sort(key=lambda t: _key(t[0]))
    return out


def align_sequences(a: str, b: str, matrix: str = ALIGN_MATRIX, gap_open: float = ALIGN_GAP_OPEN,
                    gap_extend: float = ALIGN_GAP_EXTEND, logger=None) -> list[tuple[int, int]]:
    """Aligned index pairs (i in a, j in b), in order, from ChimeraX's own Needleman–Wunsch (as ``matchmaker``
    aligns chains: a substitution matrix, affine gap costs, end gaps free) on one-letter sequences."""
    if not a or not b:
        return []
    from chimerax import sim_matrices
    from chimerax.alignment_algs import NeedlemanWunsch
    similarity = sim_matrices.matrix(matrix, logger)
    _, pairs = NeedlemanWunsch.nw(_Letters(a), _Letters(b), score_gap=-gap_extend, score_gap_open=-gap_open,
                                  similarity_matrix=similarity, ends_are_gaps=False)
    return sorted((int(i), int(j)) for i, j in pairs)


class _Letters:
    """One-letter residues as ``NeedlemanWunsch.nw`` reads a sequence (``characters``, length, no secondary
    structure).  Not ``chimerax.atomic.Sequence``: each of those owns a C++ object whose deletion from ``__del__``
    corrupted the garbage collector when a collection ran while one was finalized (``make test`` segfaulted in
    ``gc`` with two freed ``Sequence`` objects in a list, docs/development.md)."""

    def __init__(self, characters: str):
        self.characters = characters

    def __len__(self) -> int:
        return len(self.characters)

    def ss_type(self, loc: int, loc_is_ungapped: bool = False) -> None:
        return None


def match_residues(res1, vals1, res2, vals2, min_number_identity: float = 0.8, logger=None):
    """Pairs of residues (r1, v1, r2, v2) and how each chain was matched.

    Chains pair by chain ID, then leftover chains in order.  Within a pair, residues match by number and insertion
    code when at least ``min_number_identity`` of the shorter chain matches that way with identical residue names;
    otherwise by sequence alignment (different numbering schemes, constructs or missing loops); identity is the
    fraction of aligned pairs with the same residue.
    """
    c1, c2 = _by_chain(res1, vals1), _by_chain(res2, vals2)
    pairs_of_chains = [(c, c) for c in c1 if c in c2]
    left1 = [c for c in c1 if c not in c2]
    left2 = [c for c in c2 if c not in c1]
    pairs_of_chains += list(zip(left1, left2))
    out, info = [], []
    for a, b in pairs_of_chains:
        items1, items2 = c1[a], c2[b]
        by_num2 = {_key(r): (r, v) for r, v in items2}
        num_pairs = [(r, v, *by_num2[_key(r)]) for r, v in items1 if _key(r) in by_num2]
        same = sum(p[0].name == p[2].name for p in num_pairs)
        if same >= min_number_identity * min(len(items1), len(items2)):
            out += num_pairs
            info.append(ChainMatch(a, b, "number", len(num_pairs), same / max(len(num_pairs), 1)))
            continue
        s1 = "".join(THREE_TO_ONE.get(r.name, "X") for r, _ in items1)
        s2 = "".join(THREE_TO_ONE.get(r.name, "X") for r, _ in items2)
        ij = align_sequences(s1, s2, logger=logger)
        al = [(*items1[i], *items2[j]) for i, j in ij]
        ident = sum(s1[i] == s2[j] for i, j in ij) / max(len(ij), 1)
        out += al
        info.append(ChainMatch(a, b, "alignment", len(al), ident))
    return out, info


def binding_site(pairs, site_atoms, distance: float) -> np.ndarray:
    """Matched pairs with a heavy atom (in either state) within ``distance`` Å of a site atom; site residues are
    themselves excluded (the partner chain or the ligand is not its own binding site)."""
    from chimerax.atomic import Residues
    from scipy.spatial import cKDTree
    site_heavy = site_atoms.filter(site_atoms.element_numbers != 1)
    if len(site_heavy) == 0 or not pairs:
        return np.zeros(len(pairs), dtype=bool)
    tree = cKDTree(site_heavy.scene_coords)
    site_res = set(site_heavy.unique_residues)
    near = np.zeros(len(pairs), dtype=bool)
    for col in (0, 2):
        res = Residues([p[col] for p in pairs])
        atoms = res.atoms
        atoms = atoms.filter(atoms.element_numbers != 1)
        d, _ = tree.query(atoms.scene_coords, distance_upper_bound=distance)
        idx = res.indices(atoms.residues)
        hit = idx[d <= distance]
        near[np.unique(hit)] = True
    own = np.array([p[0] in site_res or p[2] in site_res for p in pairs], dtype=bool)
    return near & ~own


def site_statistics(v1: np.ndarray, v2: np.ndarray, diff: np.ndarray, site: np.ndarray) -> dict:
    """Mean ± SD per state at the site, Welch's t-test between states, and the mean difference elsewhere."""
    from scipy import stats
    nan = float("nan")
    out = {"n_matched": int(len(diff)), "mean_diff": float(diff.mean()) if len(diff) else nan,
           "n_site": int(site.sum()), "first_mean": nan, "first_sd": nan, "second_mean": nan, "second_sd": nan,
           "site_mean_diff": nan, "rest_mean_diff": float(diff[~site].mean()) if (~site).any() else nan,
           "welch_t": nan, "welch_p": nan}
    if site.sum() >= 1:
        a, b = v1[site], v2[site]
        out.update(first_mean=float(a.mean()), second_mean=float(b.mean()), site_mean_diff=float(diff[site].mean()))
        if site.sum() >= 2:
            out.update(first_sd=float(a.std(ddof=1)), second_sd=float(b.std(ddof=1)))
            t = stats.ttest_ind(b, a, equal_var=False)
            out.update(welch_t=float(t.statistic), welch_p=float(t.pvalue))
    return out


def _auto_site(structures):
    """Ligand atoms (ChimeraX's 'ligand' category: not polymer, solvent or ions) of either structure."""
    from chimerax.atomic import concatenate
    ligs = [s.atoms.filter(s.atoms.structure_categories == "ligand") for s in structures]
    return concatenate(ligs) if ligs else None


def defmap_compare(session, maps, structure=None, to=None, ligand=None, partner=None, distance: float = 5.0,
                   model=None, map_resolution=None, device="auto", normalize: bool = False, color: bool = True,
                   palette=None, range=None, key: bool = True, attribute: str = "defmap_diff", save_csv=None,
                   profile=None, return_json: bool = False):
    """Predict dynamics from two maps and store, color and test their per-residue difference (second − first)."""
    maps = list(maps)
    if len(maps) != 2:
        raise UserError(f"defmap compare needs two maps (first second), got {len(maps)}")
    if structure is None or len(structure) == 0:
        raise UserError("defmap compare needs 'structure ATOMS' (the model fitted in the first map)")
    if not attribute.isidentifier():
        raise UserError(f"attribute name '{attribute}' must be a Python identifier (letters, digits, _)")
    if ligand is not None and partner is not None:
        raise UserError("Give either 'ligand' or 'partner', not both")
    atoms2 = structure if to is None else to
    if len(atoms2) == 0:
        raise UserError("The 'to' specification matches no atoms")
    progress = Progress(session, "DEFMap compare")
    r1 = predict_structure(session, maps[0], structure, model, map_resolution, device,
                           progress=progress.span(0.0, 0.45, f"first map {maps[0].name}: "))
    r2 = predict_structure(session, maps[1], atoms2, model, map_resolution, device,
                           progress=progress.span(0.45, 0.9, f"second map {maps[1].name}: "))
    progress.update(0.9, "matching residues")
    pairs, chains = match_residues(r1.residues, r1.residue_values, r2.residues, r2.residue_values,
                                   logger=session.logger)
    if not pairs:
        raise UserError(f"No residues of {r1.structure} and {r2.structure} could be matched (no common chain IDs "
                        "or alignable sequences among the scored residues)")
    v1 = np.array([p[1] for p in pairs])
    v2 = np.array([p[3] for p in pairs])
    if normalize:
        from .export import residue_z
        v1, v2 = residue_z(v1), residue_z(v2)
    diff = v2 - v1
    structures = list(dict.fromkeys([r1.structure, r2.structure]))
    if ligand is not None:
        names = ", ".join(sorted(set(ligand.residues.names)))
        site_atoms, source = ligand, f"within {distance:g} Å of {names}"
    elif partner is not None:
        partner_chains = ", ".join(sorted(set(partner.residues.chain_ids)))
        site_atoms, source = partner, f"within {distance:g} Å of partner chain {partner_chains}"
    else:
        site_atoms = _auto_site(structures)
        names = sorted(set(site_atoms.residues.names)) if site_atoms is not None and len(site_atoms) else []
        source = f"within {distance:g} Å of ligand {', '.join(names)}" if names else "no ligand found"
    site = binding_site(pairs, site_atoms, distance) if site_atoms is not None and len(site_atoms) else \
        np.zeros(len(pairs), dtype=bool)
    stats = site_statistics(v1, v2, diff, site)
    res = CompareResult(r1, r2, [p[0] for p in pairs], [p[2] for p in pairs], v1, v2, diff, site, source, stats,
                        chains, normalize, attribute, first_map=maps[0].atomspec, second_map=maps[1].atomspec)
    _store(session, res, structures)
    progress.update(0.95, "storing and coloring")
    if color:
        _color(session, res, structures, palette, range, key)
    _log(session, res, maps)
    if save_csv:
        _write_csv(output_path(save_csv), res)
        res.files["csv"] = str(save_csv)
    if profile:
        from . import profile_plot as dm_profile
        data = dm_profile.profile_data(res.residues1, res.diff)
        png = dm_profile.plot_profile(data, output_path(profile), title=f"DEFMap difference (second − first), "
                                      f"{r2.structure} vs {r1.structure}", ylabel="Δ predicted log10 RMSF",
                                      zero_line=True)
        dm_profile.log_image(session, png, f"DEFMap difference profile {Path(profile).name}")
        res.files["profile"] = str(profile)
    progress.done(f"DEFMap compare finished: {stats['n_matched']:,} residues matched, site {stats['n_site']}, "
                  f"mean difference {stats['mean_diff']:+.3f}")
    if not return_json:
        return res
    from chimerax.core.commands import ArrayJSONEncoder, JSONResult
    return JSONResult(ArrayJSONEncoder().encode(res.as_dict()), res)


def _store(session, res: CompareResult, structures) -> None:
    from chimerax.atomic import Residue
    Residue.register_attr(session, res.attribute, "DEFMap", attr_type=float, can_return_none=True)
    for s in structures:
        for r in s.residues:
            setattr(r, res.attribute, None)
    for r1, r2, d in zip(res.residues1, res.residues2, res.diff):
        setattr(r1, res.attribute, float(d))
        setattr(r2, res.attribute, float(d))


def _color(session, res: CompareResult, structures, palette, range, key) -> None:
    from chimerax.atomic import concatenate
    from chimerax.core.colors import BuiltinColormaps
    from chimerax.std_commands.color import color_by_attr
    if range is None or range == "full":
        m = float(np.abs(res.diff).max()) or 1.0
        range = (-m, m)  # symmetric, so white is "no change"
    atoms = concatenate([s.atoms for s in structures])
    color_by_attr(session, "r:" + res.attribute, atoms=atoms, palette=palette or BuiltinColormaps[DIFF_PALETTE],
                  range=range, no_value_color=no_value_color(), key=key, log_info=False,
                  undo_name="defmap compare")
    if key:
        tidy_key(session)


def _write_csv(path: Path, res: CompareResult) -> None:
    try:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["chain1", "number1", "name1", "chain2", "number2", "name2", "first", "second", "diff", "site"])
            for r1, r2, a, b, d, s in zip(res.residues1, res.residues2, res.values1, res.values2, res.diff, res.site):
                w.writerow([r1.chain_id, r1.number, r1.name, r2.chain_id, r2.number, r2.name, f"{a:.5f}", f"{b:.5f}",
                            f"{d:.5f}", int(s)])
    except OSError as e:
        raise UserError(f"Could not write {path}: {e.strerror or e}") from None


def _log(session, res: CompareResult, maps) -> None:
    st = res.stats
    order = np.argsort(res.diff)

    def fmt_res(ix):
        return ", ".join(f"/{res.residues1[i].chain_id}:{res.residues1[i].number} ({res.diff[i]:+.2f})" for i in ix)

    def ms(m, s):
        return "—" if not math.isfinite(m) else f"{m:.3f} ± {s:.3f}" if math.isfinite(s) else f"{m:.3f}"
    chains = "; ".join(f"{c.chain1}↔{c.chain2} {c.pairs} by {c.method} ({100 * c.identity:.0f}% identical)"
                       for c in res.chains)
    unit = "z-scored log10 RMSF" if res.normalized else "log10 RMSF (Å)"
    p = st["welch_p"]
    rows = [("First", f"{escape(maps[0].name)} → {escape(str(res.first.structure))}"),
            ("Second", f"{escape(maps[1].name)} → {escape(str(res.second.structure))}"),
            ("Model", f"{escape(res.first.model.name)} ({res.first.model.resolution:g} Å)"),
            ("Residues matched", escape(chains)),
            (f"Mean difference ({unit})", f"{st['mean_diff']:+.3f}"),
            ("Most rigidified (second − first)", fmt_res(order[:5])),
            ("Most loosened", fmt_res(order[::-1][:5])),
            ("Binding site", f"{st['n_site']} residues {escape(res.site_source)}"),
            ("Site: first mean ± SD", ms(st["first_mean"], st["first_sd"])),
            ("Site: second mean ± SD", ms(st["second_mean"], st["second_sd"])),
            ("Site: mean difference / elsewhere", f"{st['site_mean_diff']:+.3f} / {st['rest_mean_diff']:+.3f}"),
            ("Welch t-test (second vs first)", "—" if not math.isfinite(p) else
             f"t = {st['welch_t']:.2f}, p = {p:.3g}")]
    html = ("<table border=1 cellpadding=4 style='border-collapse:collapse'><caption>DEFMap comparison: residue "
            f"attribute <i>{escape(res.attribute)}</i> = second − first</caption>"
            + "".join(f"<tr><th align=left>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    session.logger.info(html, is_html=True)


def defmap_compare_desc() -> CmdDesc:
    from chimerax.atomic import AtomsArg
    from chimerax.map import MapsArg
    return CmdDesc(
        required=[("maps", MapsArg)],
        keyword=[("structure", AtomsArg), ("to", AtomsArg), ("ligand", AtomsArg), ("partner", AtomsArg),
                 ("distance", DistanceArg), ("model", StringArg), ("map_resolution", MapResolutionArg),
                 ("device", EnumOf(("auto", "gpu", "cpu"))), ("normalize", BoolArg), ("color", BoolArg),
                 ("palette", ColormapArg), ("range", ColormapRangeArg), ("key", BoolArg), ("attribute", StringArg),
                 ("save_csv", _save_arg()), ("profile", _save_arg())],
        required_arguments=["structure"],
        synopsis="compare DEFMap dynamics predicted from two maps (e.g. apo and holo)")


def _save_arg():
    from chimerax.core.commands import SaveFileNameArg
    return SaveFileNameArg
