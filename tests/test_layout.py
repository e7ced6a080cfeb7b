"""The package's shape: no import circles between its modules, and the modules training imports stay free of
ChimeraX and of packages ChimeraX does not ship (onnx, torch)."""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
CHIMERAX_FREE = ("preprocess", "network", "onnx_format", "rotations", "shared_features", "nma", "map_shape",
                 "combination", "residues", "errors")


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(sibling modules, other top-level packages) that a module imports, at any depth of its code."""
    own, other = set(), set()
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.ImportFrom) and n.level == 1:
            own.update([n.module.split(".")[0]] if n.module else [a.name for a in n.names])
        elif isinstance(n, ast.ImportFrom) and n.module:
            if n.module.startswith("chimerax.defmap."):
                own.add(n.module.split(".")[2])
            else:
                other.add(n.module if n.module.startswith("chimerax") else n.module.split(".")[0])
        elif isinstance(n, ast.Import):
            other.update(a.name if a.name.startswith("chimerax") else a.name.split(".")[0] for a in n.names)
    return own, other


def test_no_import_circles():
    mods = {p.stem: p for p in SRC.glob("*.py") if p.stem != "__init__"}
    graph = {m: {d for d in _imports(p)[0] if d in mods and d != m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, f"import circle: {' -> '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = 2
    for m in sorted(mods):
        if m not in state:
            visit(m, [m])


def test_training_side_modules_need_no_chimerax_onnx_or_torch():
    for m in CHIMERAX_FREE:
        _, other = _imports(SRC / f"{m}.py")
        bad = {o for o in other if o.startswith("chimerax") or o in ("onnx", "torch", "mrcfile")}
        assert not bad, f"src/{m}.py imports {bad}"


def test_registration_table_matches_bundle_info():
    from chimerax.defmap import bundle_api
    xml = ET.parse(ROOT / "bundle_info.xml").getroot()
    lines = [e.text for e in xml.iter("ChimeraXClassifier")]
    assert not any(":: Bundle ::" in t for t in lines), "the bundle builder writes the Bundle line itself"
    declared = [t.split("::")[2].strip() for t in lines if ":: Command ::" in t]
    assert sorted(declared) == sorted(bundle_api.COMMANDS)
    assert xml.get("customInit", "false") == "false"
