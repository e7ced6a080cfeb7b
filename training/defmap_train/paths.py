"""Where training finds its inputs and writes its outputs, and how it seeds random draws: one place, so that no
module needs the command line's module for a path or a seed."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # training/
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"  # structures, md_reference, emdb (read only, beside the repository)
DEFAULT_DATA = HERE / "data"  # generated ensembles, samples and map caches (gitignored)


def seed_of(*parts) -> int:
    """A seed from names and numbers (e.g. "map", protein, k): every generated file is reproducible on its own, in
    any order and in any process."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def repo_relative(p) -> str:
    """A path as typed from the repository root (the command lines in reports and docs are run from there)."""
    p = Path(p).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def write_json(path, obj, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON (numbers numpy gives as floats, a final newline), making the folder first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, default=float) + "\n", encoding="utf-8")
    return path
