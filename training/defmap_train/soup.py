"""Weight averaging ("model soup", Wortsman et al. 2022) of two train2 runs whose models share an ancestry: run B
warm-started from run A fold by fold (``train2 --init-cv``) and final by final (``--init-checkpoint``).  The averaged
fold k model has still never seen fold k's test proteins, so the soup's CV is as protein-disjoint as either run's,
and one averaged network costs what one network costs at run time."""

from __future__ import annotations

from pathlib import Path

from .export import load_checkpoint, save_checkpoint

KIND_DIRS = ("map", "mapmodel")


def soup(a_dir: Path, b_dir: Path, out: Path) -> list[Path]:
    """Average every checkpoint of ``a_dir`` (finals and cv/ folds, both kinds) with the same file of ``b_dir``."""
    written = []
    for kind in KIND_DIRS:
        for f in sorted((a_dir / kind).glob("*.pt")) + sorted((a_dir / kind / "cv").glob("*.pt")):
            rel = f.relative_to(a_dir)
            if not (b_dir / rel).exists():
                raise SystemExit(f"{b_dir / rel} is missing: the two runs must have the same checkpoints")
            model, ck = load_checkpoint(f)
            other, ck_b = load_checkpoint(b_dir / rel)
            if ck_b["resolution"] != ck["resolution"] or ck_b.get("in_channels") != ck.get("in_channels"):
                raise SystemExit(f"{rel}: the two checkpoints are different kinds of model")
            sa, sb = model.state_dict(), other.state_dict()
            model.load_state_dict({k: 0.5 * (sa[k] + sb[k]) for k in sa})
            save_checkpoint(out / rel, model, ck["arch"], ck["resolution"],
                            {"soup_of": [str(f), str(b_dir / rel)]})
            written.append(out / rel)
    return written


def run(a) -> None:
    out = Path(a.out)
    if any(out.glob("*/*.pt")):
        raise SystemExit(f"{out} already holds checkpoints")
    for p in soup(Path(a.runs[0]), Path(a.runs[1]), out):
        print(p, flush=True)
