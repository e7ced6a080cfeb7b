"""The bundle as a real ChimeraX sees it: the wheel from ChimeraX's bundle builder, installed by pip with the
only-if-needed strategy (as ``toolshed install`` does) into a fresh environment that holds only ChimeraX and the
bundle's declared dependencies, then registered by ChimeraX's own toolshed from the wheel's METADATA.

The environment is made anew on every run (about a minute with pip's cache).  The PyPI ChimeraX wheel is one
monolithic distribution named ``ChimeraX`` that contains core 1.7.1; a real ChimeraX has a ``ChimeraX-Core``
distribution instead, which the bundle's ``Requires-Dist: ChimeraX-Core`` names.  The test writes that
distribution's record (dist-info only, no files) so pip resolves the requirement as it does in a real ChimeraX.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from .helpers import shared_path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
CORE_VERSION = "1.7.1"  # the core inside PyPI ChimeraX 0.1.71


def _run(cmd: list[str], cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("PYOPENGL_PLATFORM", "osmesa")
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, encoding="utf-8", timeout=timeout, env=env)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _checkout_copy(dst: Path) -> Path:
    """The files a fresh clone of this working tree would have (tracked and untracked-but-not-ignored)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    return dst


def _core_dist_info(site: Path) -> None:
    d = site / f"ChimeraX_Core-{CORE_VERSION}.dist-info"
    d.mkdir()
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: ChimeraX-Core\nVersion: {CORE_VERSION}\n"
                                "Summary: the ChimeraX core inside the PyPI ChimeraX wheel\n")
    (d / "INSTALLER").write_text("tests\n")
    (d / "RECORD").write_text("")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """(python of the fresh environment, wheel path, {package: version} before and after installing the wheel)."""
    shared_path("emdb", "emd_3488.mrc")
    work = tmp_path_factory.mktemp("client")
    # 1. the wheel, built by ChimeraX's bundle builder from a copy of the checkout as a fresh clone has it
    src = _checkout_copy(work / "checkout")
    _run([sys.executable, str(src / "tools" / "build_bundle.py")], cwd=src)
    wheel = next((src / "dist").glob("*.whl"))
    # 2. a fresh environment: ChimeraX and what a real ChimeraX ships, nothing of the bundle's
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--prefer-binary"]
    _run(pip + ["--no-deps", "ChimeraX==0.1.71"])
    _run(pip + ["-r", str(TOOLS / "requirements-chimerax.txt")])
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    _core_dist_info(site)
    listing = [str(py), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"]

    def installed() -> dict[str, str]:
        return {d["name"].lower(): d["version"] for d in json.loads(_run(listing).stdout)}
    before = installed()
    # 3. what `toolshed install wheel` runs: pip with the only-if-needed upgrade strategy, dependencies from PyPI
    _run(pip + ["--upgrade-strategy", "only-if-needed", str(wheel)])
    after = installed()
    return py, wheel, before, after


def test_wheel_metadata_has_one_bundle_line_and_the_commands(client):
    _, wheel, _, _ = client
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        names = z.namelist()
    lines = [ln for ln in meta.splitlines() if "ChimeraX ::" in ln]
    assert sum(":: Bundle ::" in ln for ln in lines) == 1, lines
    commands = sorted(ln.split("::")[2].strip() for ln in lines if ":: Command ::" in ln)
    assert commands == ["defmap", "defmap compare", "defmap fragments", "defmap models"]
    requires = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    assert not any(r.split()[1].lower() in ("onnx", "torch", "mrcfile") for r in requires), requires
    gpu = next(r for r in requires if r.split()[1] == "onnxruntime-gpu")
    cpu = next(r for r in requires if r.split()[1] == "onnxruntime")
    assert "platform_machine" in gpu and "darwin" in cpu  # CUDA wheels only where they exist
    # a plain build from a clean checkout carries the models, their side files, their card and the help page
    models = ("defmap_5A", "defmap_6A", "defmap_7A", "defmap_mapmodel_5A", "defmap_mapmodel_6A", "defmap_mapmodel_7A")
    prior = ["prior/structure_prior.onnx", "prior/md_units.json", "prior/expected_r.json"]
    for f in [f"{m}.onnx" for m in models] + [f"{m}.stages.npz" for m in models] + ["MODEL_CARD.md"] + prior:
        assert f"chimerax/defmap/onnx_models/{f}" in names
    assert "chimerax/defmap/docs/user/commands/defmap.html" in names
    assert not any(n.endswith(("headless.py", "demo.py")) for n in names), "test harness shipped in the wheel"


def test_install_keeps_numpy_and_adds_only_declared_dependencies(client):
    _, _, before, after = client
    assert after["numpy"] == before["numpy"] == "1.26.4"
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert changed == [], f"installing the bundle changed {changed}"
    added = set(after) - set(before)
    assert {"chimerax-defmap", "onnxruntime-gpu"} <= added
    assert not added & {"onnx", "torch", "mrcfile", "ml-dtypes"}, added


@pytest.fixture(scope="module")
def client_run(client, tmp_path_factory):
    py, _, _, _ = client
    out = tmp_path_factory.mktemp("client_run") / "result.json"
    # cwd outside the checkout: nothing of src/ or the repository may be importable but the installed wheel
    p = _run([str(py), str(ROOT / "tests" / "client_session.py"), str(out), str(shared_path())],
             cwd=out.parent)
    return json.loads(out.read_text()), p


def test_toolshed_registers_defmap_from_the_installed_wheel(client, client_run):
    r, proc = client_run
    assert r["absent_packages"] == ["onnx", "torch", "mrcfile"]
    assert r["toolshed_log"].strip() == "", r["toolshed_log"]
    for msg in ("Bundle line ignored", "Malformed", "must be first", "Unable to register", "custom initialization"):
        assert msg not in proc.stdout + proc.stderr
    assert r["bundle"]["commands"] == ["defmap", "defmap models", "defmap compare", "defmap fragments"]
    assert not r["bundle"]["custom_init"]
    site = str(Path(r["python"]).parents[1])
    assert r["package_file"].startswith(site), "the bundle must come from the installed wheel"
    for name, text in r["usage"].items():
        assert text.startswith(name), text
    # help defmap: the page shipped in the wheel
    assert r["help_url"] == "help:user/commands/defmap.html"
    page = [Path(d) / "user" / "commands" / "defmap.html" for d in r["help_dirs"]]
    assert any(p.is_file() and str(p).startswith(site) for p in page), r["help_dirs"]


def test_defmap_runs_with_the_shipped_models_without_onnx(client_run, session):
    r, _ = client_run
    assert [m["name"] for m in r["models"]] == ["defmap-5A", "defmap-mapmodel-5A", "defmap-6A", "defmap-mapmodel-6A",
                                                "defmap-7A", "defmap-mapmodel-7A"]
    assert all("site-packages/chimerax/defmap/onnx_models" in m["path"] for m in r["models"])
    assert r["models_json"]["chosen"] == "defmap-mapmodel-6A" and r["models_json"]["chosen_voxel"] == "defmap-6A"
    assert r["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    # the same command in this (development) environment gives the same values
    from chimerax.core.commands import run
    d = shared_path("emdb")
    run(session, "close")
    run(session, f"open {d / 'emd_3488.mrc'}")
    run(session, f"open {d / '5me2.pdb'}")
    here = run(session, "defmap #1 structure #2 mapResolution 3.2")
    ids = [[x.chain_id, int(x.number)] for x in here.residues]
    run(session, "close")
    assert here.model.name == r["model"] == "defmap-mapmodel-5A"  # structure mode reads map + model
    assert ids == [row[:2] for row in r["residues"]]
    diff = np.abs(np.array([row[2] for row in r["residues"]]) - here.residue_values)
    assert diff.max() <= 1e-6, diff.max()


SHARED_IN_CLIENT = """
import importlib.util
import numpy as np
from chimerax.defmap import network, preprocess as pp
assert importlib.util.find_spec("onnx") is None
models = network.installed_models()
for info in models:
    p = network.Predictor(info, "cpu")
    c = len(info.channels)
    x = np.abs(np.random.default_rng(0).normal(size=(c, 24, 24, 24))).astype(np.float32)
    grid = pp.Grid(x[0] if c == 1 else x, np.zeros(3), info.spec.voxel_size)
    y = p.predict_centers(grid, np.array([[8, 9, 10], [12, 12, 12]]), rotation=5)
    assert p.method == "shared" and np.isfinite(y).all(), (info.name, p.method)
print("shared", len(models))
"""


def test_shipped_models_run_shared_features_in_the_client(client, tmp_path):
    """The wheel's side files give every shipped model its conv chain and stage graphs, read without onnx."""
    py, _, _, _ = client
    p = _run([str(py), "-c", SHARED_IN_CLIENT], cwd=tmp_path)
    assert p.stdout.split() == ["shared", "6"], p.stdout


@pytest.mark.parametrize("script", ["examples/batch.cxc", "examples/batch_defmap.py"])
def test_batch_examples_run_in_the_client(client, script, tmp_path):
    """The batch examples (docs/workflows.md), as `chimerax --nogui --exit --script` runs them, in the client."""
    py, _, _, _ = client
    shared_path("emdb", "5ni1_updated.cif")
    if script.endswith(".cxc"):
        p = _run([str(py), str(TOOLS / "headless.py"), script], cwd=ROOT)
        assert "Error" not in p.stderr
        for f in ("emd3488_5me2.csv", "emd3488_5ni1.csv", "molmap6_5me2.csv", "emd3488_5me2.defattr"):
            assert (ROOT / "batch_output" / f).stat().st_size > 1000
    else:
        d = shared_path("emdb")
        out = tmp_path / "results.json"
        _run([str(py), str(ROOT / script), "--out", str(out), str(d / "emd_3488.mrc"), str(d / "5me2.pdb"),
              str(d / "emd_3488.mrc"), str(d / "5ni1_updated.cif")], cwd=tmp_path)
        records = json.loads(out.read_text())
        assert [len(x["residues"]) > 500 for x in records] == [True, True]
