"""``defmap fragments``: DEFMap predictions averaged over HDX-MS peptide fragments (DEFMap Fig 5C).

HDX-MS measures exchange per peptide, not per residue, so predictions are compared on the same footing: the mean of
the residue attribute over each fragment's scored residues, then the Pearson correlation with the experimental values.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from chimerax.core.commands import CmdDesc, OpenFileNameArg, SaveFileNameArg, StringArg
from chimerax.core.errors import UserError

EXPERIMENTAL_NAMES = ("experimental", "exp", "value", "uptake", "hdx", "protection", "deuteration")


@dataclass
class Fragment:
    chain: str  # "" = every chain
    start: int
    end: int
    experimental: float | None = None
    line: int = 0
    mean: float | None = None
    scored: int = 0


@dataclass
class FragmentResult:
    fragments: list[Fragment]
    attribute: str
    pearson_r: float | None = None
    pearson_p: float | None = None
    spearman_r: float | None = None
    n_compared: int = 0
    csv_path: str | None = None
    structures: list = field(default_factory=list)

    def as_dict(self) -> dict:
        def num(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
        return {"attribute": self.attribute, "pearson_r": num(self.pearson_r), "pearson_p": num(self.pearson_p),
                "spearman_r": num(self.spearman_r), "n_compared": self.n_compared, "csv": self.csv_path,
                "structures": [s.atomspec for s in self.structures],
                "fragments": [{"chain": f.chain, "start": f.start, "end": f.end, "residues_scored": f.scored,
                               "mean_prediction": num(f.mean), "experimental": num(f.experimental)}
                              for f in self.fragments]}


def _int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def read_fragments(path: str | Path) -> list[Fragment]:
    """CSV (comma, tab or semicolon) of chain, start, end[, experimental]; a header row is optional.

    With a header, columns are found by name (chain, start, end and one of experimental/value/uptake/...); without
    one, by position.  Blank lines and lines starting with # are skipped.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise UserError(f"Cannot read fragment file {p}: {e.strerror or e}") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise UserError(f"Fragment file {p.name} has no fragments")
    first = lines[0][1]
    delim = "\t" if "\t" in first else ";" if ";" in first and "," not in first else ","
    rows = [(n, [c.strip() for c in row]) for (n, _), row in
            zip(lines, csv.reader([ln for _, ln in lines], delimiter=delim))]
    cols = {"chain": 0, "start": 1, "end": 2, "exp": 3}
    if len(rows[0][1]) < 3 or _int(rows[0][1][1]) is None:  # header row
        names = [c.lower() for c in rows[0][1]]
        try:
            cols = {"chain": names.index("chain"), "start": names.index("start"), "end": names.index("end"),
                    "exp": next((names.index(k) for k in EXPERIMENTAL_NAMES if k in names), None)}
        except ValueError:
            raise UserError(f"Fragment file {p.name}: header needs columns chain, start, end "
                            f"(got {', '.join(rows[0][1])})") from None
        if cols["exp"] is None and len(names) > 3:
            cols["exp"] = 3
        rows = rows[1:]
    frags = []
    for n, row in rows:
        if len(row) < 3:
            raise UserError(f"Fragment file {p.name} line {n}: expected chain, start, end[, experimental]")
        start, end = _int(row[cols["start"]]), _int(row[cols["end"]])
        if start is None or end is None:
            raise UserError(f"Fragment file {p.name} line {n}: start and end must be residue numbers")
        if end < start:
            raise UserError(f"Fragment file {p.name} line {n}: end {end} is before start {start}")
        exp = None
        ei = cols["exp"]
        if ei is not None and ei < len(row) and row[ei] != "":
            try:
                exp = float(row[ei])
            except ValueError:
                raise UserError(f"Fragment file {p.name} line {n}: experimental value '{row[ei]}' is not a "
                                "number") from None
        frags.append(Fragment(row[cols["chain"]], start, end, exp, n))
    if not frags:
        raise UserError(f"Fragment file {p.name} has no fragments")
    return frags


def fragment_means(fragments: list[Fragment], values: dict[tuple[str, int], float], progress=None) -> None:
    """Mean of the scored residues in each fragment (None when no residue of it was scored)."""
    for i, f in enumerate(fragments):
        if progress is not None:
            progress.update(i / len(fragments), f"fragment {i + 1:,}/{len(fragments):,}")
        vs = [v for (c, num), v in values.items() if (not f.chain or c == f.chain) and f.start <= num <= f.end]
        f.scored = len(vs)
        f.mean = float(np.mean(vs)) if vs else None


def _residue_values(residues, attribute: str) -> dict[tuple[str, int], float]:
    vals: dict[tuple[str, int], float] = {}
    for r in residues:
        v = getattr(r, attribute, None)
        if v is not None and r.polymer_type != 0 and r.insertion_code == "":
            vals[(r.chain_id, int(r.number))] = float(v)
    return vals


def correlate(fragments: list[Fragment]) -> tuple[float | None, float | None, float | None, int]:
    pairs = [(f.mean, f.experimental) for f in fragments if f.mean is not None and f.experimental is not None]
    if len(pairs) < 3:
        return None, None, None, len(pairs)
    x, y = np.array(pairs).T
    if x.std() == 0 or y.std() == 0:
        return None, None, None, len(pairs)
    from scipy import stats
    r, p = stats.pearsonr(x, y)
    rho = stats.spearmanr(x, y).statistic
    return float(r), float(p), float(rho), len(pairs)


def write_fragment_csv(path: str | Path, fragments: list[Fragment]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["chain", "start", "end", "residues_scored", "mean_prediction", "experimental"])
        for fr in fragments:
            w.writerow([fr.chain, fr.start, fr.end, fr.scored, "" if fr.mean is None else f"{fr.mean:.5f}",
                        "" if fr.experimental is None else f"{fr.experimental:g}"])


def defmap_fragments(session, file, structure=None, attribute: str = "defmap", save_csv=None,
                     return_json: bool = False):
    """Per-fragment mean of a residue attribute from an earlier ``defmap`` run, with Pearson r to experiment."""
    from chimerax.atomic import AtomicStructure
    if structure is not None:
        structures = list(structure.unique_structures)
    else:
        structures = [m for m in session.models.list(type=AtomicStructure)
                      if any(getattr(r, attribute, None) is not None for r in m.residues)]
    if not structures:
        raise UserError(f"No structure has residue attribute '{attribute}'; run 'defmap MAP structure ATOMS' first")
    residues = structure.unique_residues if structure is not None else [r for s in structures for r in s.residues]
    values = _residue_values(residues, attribute)
    if not values:
        raise UserError(f"No residue of {', '.join(str(s) for s in structures)} has a '{attribute}' value")
    from .progress import Progress
    progress = Progress(session, "DEFMap fragments")
    progress.update(0.0, f"reading {Path(file).name}")
    frags = read_fragments(file)
    fragment_means(frags, values, progress.span(0.1, 0.9, "averaging "))
    progress.update(0.9, "correlating")
    r, p, rho, n = correlate(frags)
    from .export import output_path
    out = output_path(save_csv) if save_csv else Path(file).expanduser().with_suffix(".defmap.csv")
    res = FragmentResult(frags, attribute, r, p, rho, n, None, structures)
    try:
        write_fragment_csv(out, frags)
        res.csv_path = str(out)
    except OSError as e:
        if save_csv:
            raise UserError(f"Could not write {out}: {e.strerror or e}") from None
        session.logger.warning(f"Could not write {out} ({e.strerror or e}); give 'saveCsv FILE'")
    _log(session, res, Path(file).name)
    progress.done(f"DEFMap fragments finished: {len(frags):,} fragments"
                  + (f", Pearson r {r:.3f} over {n}" if r is not None else ""))
    if not return_json:
        return res
    from chimerax.core.commands import ArrayJSONEncoder, JSONResult
    return JSONResult(ArrayJSONEncoder().encode(res.as_dict()), res)


def _log(session, res: FragmentResult, name: str) -> None:
    def fmt(x, spec=".3f"):
        return "—" if x is None else format(x, spec)
    rows = "".join(f"<tr><td>{escape(f.chain) or 'all'}</td><td>{f.start}–{f.end}</td><td>{f.scored}</td>"
                   f"<td>{fmt(f.mean)}</td><td>{fmt(f.experimental, 'g')}</td></tr>" for f in res.fragments)
    corr = (f"Pearson r = {res.pearson_r:.3f} (p = {res.pearson_p:.2g}), Spearman ρ = {res.spearman_r:.3f}, "
            f"n = {res.n_compared} fragments" if res.pearson_r is not None else
            f"no correlation ({res.n_compared} fragments with both values; 3 with varying values are needed)")
    missing = sum(f.mean is None for f in res.fragments)
    html = ("<table border=1 cellpadding=4 style='border-collapse:collapse'>"
            f"<caption>DEFMap per-fragment mean of <i>{escape(res.attribute)}</i> for {escape(name)}: "
            f"{escape(corr)}</caption><tr><th>chain</th><th>residues</th><th>scored</th><th>mean prediction</th>"
            "<th>experimental</th></tr>" + rows + "</table>")
    session.logger.info(html, is_html=True)
    if missing:
        session.logger.warning(f"{missing} of {len(res.fragments)} fragments have no scored residue")
    if res.csv_path:
        session.logger.info(f"DEFMap: wrote fragment table to {res.csv_path}")


def defmap_fragments_desc() -> CmdDesc:
    from chimerax.atomic import AtomsArg
    return CmdDesc(required=[("file", OpenFileNameArg)],
                   keyword=[("structure", AtomsArg), ("attribute", StringArg), ("save_csv", SaveFileNameArg)],
                   synopsis="average DEFMap predictions over HDX-MS peptide fragments and correlate with experiment")
