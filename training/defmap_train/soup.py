"""Weight averaging ("model soup", Wortsman et al. 2022) of `train` runs whose models share an ancestry: runs B, C, ...
warm-started from run A fold by fold (``train --init-cv``) and final by final (``--init-checkpoint``).  An averaged
fold k model has still never seen fold k's test proteins, so the soup's CV is as protein-disjoint as any run's, and one
averaged network costs what one network costs at run time."""

from __future__ import annotations

from pathlib import Path

from .export import load_checkpoint, save_checkpoint

KIND_DIRS = ("map", "mapmodel")


def exported_state(folder: Path, ck: dict) -> dict:
    """The state dict of the exported model in ``folder`` that a checkpoint of this kind and resolution started
    from (``train --init-onnx``: every fold and the final model start from the same file)."""
    from .pipeline import init_from_onnx
    channels = int(ck.get("in_channels", 1))
    f = folder / f"defmap_{'mapmodel_' if channels == 2 else ''}{float(ck['resolution']):g}A.onnx"
    if not f.exists():
        raise SystemExit(f"{f} is missing: no exported model of this kind and resolution")
    return init_from_onnx(f, channels, int(ck.get("outputs", 1)))


def soup(dirs: list[Path], out: Path) -> list[Path]:
    """Average every checkpoint of ``dirs[0]`` (finals and cv/ folds, both kinds) with the same file of the others;
    a folder of exported ONNX models (e.g. ``onnx_models``, what a fine-tune started from) gives its model of the
    checkpoint's kind and resolution."""
    written = []
    first = Path(dirs[0])
    for kind in KIND_DIRS:
        for f in sorted((first / kind).glob("*.pt")) + sorted((first / kind / "cv").glob("*.pt")):
            rel = f.relative_to(first)
            model, ck = load_checkpoint(f)
            states = [model.state_dict()]
            for d in dirs[1:]:
                if any(Path(d).glob("*.onnx")):
                    states.append(exported_state(Path(d), ck))
                    continue
                if not (Path(d) / rel).exists():
                    raise SystemExit(f"{Path(d) / rel} is missing: the runs must have the same checkpoints")
                other, ck_o = load_checkpoint(Path(d) / rel)
                if ck_o["resolution"] != ck["resolution"] or ck_o.get("in_channels") != ck.get("in_channels"):
                    raise SystemExit(f"{rel}: the checkpoints are different kinds of model")
                states.append(other.state_dict())
            model.load_state_dict({k: sum(st[k] for st in states) / len(states) for k in states[0]})
            save_checkpoint(out / rel, model, ck["arch"], ck["resolution"],
                            {"soup_of": [str(Path(d) / rel) for d in dirs]})
            written.append(out / rel)
    return written


def run(a) -> None:
    out = Path(a.out)
    if any(out.glob("*/*.pt")):
        raise SystemExit(f"{out} already holds checkpoints")
    for p in soup([Path(r) for r in a.runs], out):
        print(p, flush=True)
