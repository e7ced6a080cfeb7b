"""The code's shape: no import circles in the bundle (src/) or in training's package (training/defmap_train), nothing
imports training's command line module, and the bundle modules training imports stay free of ChimeraX and of packages
ChimeraX does not ship (onnx, torch, mrcfile)."""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
TRAINING = ROOT / "training"
PACKAGE = TRAINING / "defmap_train"
NOT_FOR_TRAINING = ("onnx", "torch", "mrcfile")  # besides chimerax itself


def _import_nodes(path: Path, top_level_only: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module, at any depth of its code (or only those run on import), leaving out those
    under ``try: ... except ImportError`` (optional by construction)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = {id(m) for n in ast.walk(tree) if isinstance(n, ast.Try)
               and any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                       for h in n.handlers)
               for s in n.body for m in ast.walk(s)}
    nodes = ast.walk(tree) if not top_level_only else (m for s in tree.body if not isinstance(
        s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for m in ast.walk(s))
    return [n for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in guarded]


def _bundle_modules_named(n: ast.Import | ast.ImportFrom) -> set[str]:
    """The chimerax.defmap modules an absolute import names (``from chimerax.defmap import preprocess`` too)."""
    if isinstance(n, ast.Import):
        return {a.name.split(".")[2] for a in n.names if a.name.startswith("chimerax.defmap.")}
    if n.level or not n.module:
        return set()
    if n.module.startswith("chimerax.defmap."):
        return {n.module.split(".")[2]}
    return {a.name for a in n.names} if n.module == "chimerax.defmap" else set()


def _imports(path: Path, top_level_only: bool = False) -> tuple[set[str], set[str]]:
    """(sibling modules, other top-level packages) that a bundle module imports."""
    own, other = set(), set()
    for n in _import_nodes(path, top_level_only):
        named = _bundle_modules_named(n)
        own |= named
        if isinstance(n, ast.ImportFrom) and n.level == 1:
            own.update([n.module.split(".")[0]] if n.module else [a.name for a in n.names])
        elif isinstance(n, ast.ImportFrom) and n.module and not named:
            other.add(n.module if n.module.startswith("chimerax") else n.module.split(".")[0])
        elif isinstance(n, ast.Import):
            other.update(a.name if a.name.startswith("chimerax") else a.name.split(".")[0] for a in n.names
                         if not a.name.startswith("chimerax.defmap."))
    return own, other


def _assert_no_circles(graph: dict[str, set[str]], where: str) -> None:
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, f"import circle in {where}: {' -> '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def _src_graph() -> dict[str, set[str]]:
    mods = {p.stem: p for p in SRC.glob("*.py") if p.stem != "__init__"}
    return {m: {d for d in _imports(p)[0] if d in mods and d != m} for m, p in mods.items()}


def test_no_import_circles():
    _assert_no_circles(_src_graph(), "src/")


def _training_modules() -> dict[str, Path]:
    """Training's package modules by dotted name relative to the package ("cli", "diagnostics.sd_probe", and
    "diagnostics" for a subpackage's __init__)."""
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            out[name] = p
    return out


def _training_graph() -> dict[str, set[str]]:
    mods = _training_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name.split(".") if path.stem == "__init__" else name.split(".")[:-1]
        deps = set()
        for n in _import_nodes(path):
            if isinstance(n, ast.ImportFrom) and n.level:
                base = package[:len(package) - (n.level - 1)] + (n.module.split(".") if n.module else [])
            elif isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "defmap_train":
                base = n.module.split(".")[1:]
            else:
                if isinstance(n, ast.Import):
                    deps |= {".".join(a.name.split(".")[1:]) for a in n.names
                             if a.name.startswith("defmap_train.")}
                continue
            target = ".".join(base)
            subs = {f"{target}.{a.name}".lstrip(".") for a in n.names} & set(mods)
            deps |= subs or ({target} & set(mods))
        graph[name] = deps - {name}
    return graph


def test_training_has_no_import_circles_and_nothing_imports_its_cli():
    graph = _training_graph()
    assert {"cli", "pipeline", "train", "model", "paths"} <= set(graph)  # the parse found the package
    assert "paths" in graph["validate_md"]  # and resolves its relative imports
    _assert_no_circles(graph, "training/defmap_train")
    users = sorted(m for m, deps in graph.items() if "cli" in deps and m != "__main__")
    assert not users, f"{users} import defmap_train.cli (paths and seeds are in defmap_train.paths)"


def _training_files() -> list[Path]:
    skip = ("data", "runs", "build")
    return [p for p in TRAINING.rglob("*.py")
            if not any(part.startswith(".") or part in skip for part in p.relative_to(TRAINING).parts)]


def bundle_modules_training_imports() -> set[str]:
    """The chimerax.defmap modules training/ imports (package, tests and scripts), with every bundle module those
    import in turn: what must import without ChimeraX."""
    named = {m for p in _training_files() for n in _import_nodes(p) for m in _bundle_modules_named(n)}
    graph = _src_graph()
    todo, seen = list(named), set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def test_bundle_modules_training_imports_need_no_chimerax_onnx_or_torch():
    mods = bundle_modules_training_imports()
    assert mods and all((SRC / f"{m}.py").is_file() for m in mods), mods  # found, and each is a bundle module
    for m in sorted(mods):
        _, other = _imports(SRC / f"{m}.py")
        bad = {o for o in other if o.startswith("chimerax") or o in NOT_FOR_TRAINING}
        assert not bad, f"src/{m}.py, which training imports, imports {bad}"
    # importing any of them runs the package's __init__ first
    _, other = _imports(SRC / "__init__.py", top_level_only=True)
    bad = {o for o in other if o.startswith("chimerax") or o in NOT_FOR_TRAINING}
    assert not bad, f"src/__init__.py imports {bad} when it is imported"


def test_registration_table_matches_bundle_info():
    from chimerax.defmap import bundle_api
    xml = ET.parse(ROOT / "bundle_info.xml").getroot()
    lines = [e.text for e in xml.iter("ChimeraXClassifier")]
    assert not any(":: Bundle ::" in t for t in lines), "the bundle builder writes the Bundle line itself"
    declared = [t.split("::")[2].strip() for t in lines if ":: Command ::" in t]
    assert sorted(declared) == sorted(bundle_api.COMMANDS)
    assert xml.get("customInit", "false") == "false"
