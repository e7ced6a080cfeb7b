"""`defmap` end to end in a real headless ChimeraX session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chimerax.core.commands import run

from .conftest import TOOLS
from .helpers import (
    read_heavy_atoms,
    shared_path,
    simulate_map,
)


def open_emd3488(cx):
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    return cx.models.list(model_id=(1,))[0], cx.models.list(model_id=(2,))[0]


def test_every_residue_inside_map_gets_a_value(cx, random_model):
    vol, s = open_emd3488(cx)
    res = run(cx, f"defmap #1 structure #2 model {random_model}")
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    _, outside = vol.interpolated_values(heavy.scene_coords, out_of_bounds_list=True)
    inside_res = set(heavy.residues) - set(heavy.filter(np.isin(np.arange(len(heavy)), outside)).residues)
    assert len(inside_res) > 500
    for r in inside_res:
        assert r.defmap is not None and np.isfinite(r.defmap), r
        assert r.defmap_z is not None
    vals = np.array([r.defmap for r in inside_res])
    assert vals.std() > 0
    assert res.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert len(res.residues) == len(inside_res)


def test_defattr_save_lists_every_scored_residue(cx, random_model, tmp_path):
    open_emd3488(cx)
    res = run(cx, f"defmap #1 structure #2 model {random_model}")
    out = tmp_path / "dyn.defattr"
    run(cx, f"save {out} attrName r:defmap models #2")
    lines = [ln for ln in out.read_text().splitlines() if ln.startswith("\t")]
    assert len(lines) == len(res.residues)
    spec, val = lines[0].split("\t")[1:]
    r0 = res.residues[0]
    assert spec.endswith(f":{r0.number}") and abs(float(val) - res.residue_values[0]) < 1e-6


def test_half_blurred_map_predicts_higher_dynamics_on_blurred_half(cx, trained_model):
    """A model trained here on simulated ensemble maps (conftest) ranks the blurred half above the sharp half."""
    # test protein (never seen in training): sharp half at x < median, blurred half at x >= median
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    flexible = xyz[:, 0] >= np.median(xyz[:, 0])
    rmsf = np.where(flexible, 2.5, 0.5)
    m, origin = simulate_map(xyz, rmsf, resolution=4.0)
    from chimerax.map import volume_from_grid_data
    from chimerax.map_data import ArrayGridData
    volume_from_grid_data(ArrayGridData(m, origin=tuple(origin), step=(1.0, 1.0, 1.0)), cx)
    run(cx, f"open {pdb}", log=False)
    s = cx.models.list(model_id=(2,))[0]
    res = run(cx, f"defmap #1 structure #2/A model {trained_model} mapResolution 4")
    x_ca = np.array([r.find_atom("CA").coord[0] if r.find_atom("CA") else r.atoms.coords[:, 0].mean()
                     for r in res.residues])
    flex_res = x_ca >= np.median(xyz[:, 0])
    v = res.residue_values
    assert v[flex_res].mean() > v[~flex_res].mean() + 0.1, (v[flex_res].mean(), v[~flex_res].mean())
    assert s.residues[0].defmap is not None


def test_session_save_restore_keeps_attributes_and_colors(cx, random_model, tmp_path):
    open_emd3488(cx)
    res = run(cx, f"defmap #1 structure #2 model {random_model}")
    before = {(r.chain_id, r.number): (r.defmap, r.defmap_z) for r in res.residues}
    colors = res.structure.residues.ribbon_colors.copy()
    path = tmp_path / "s.cxs"
    run(cx, f"save {path}")
    run(cx, "close")
    run(cx, f"open {path}")
    s = [m for m in cx.models.list() if m.name == "5me2.pdb"][0]
    after = {(r.chain_id, r.number): (r.defmap, r.defmap_z) for r in s.residues if r.defmap is not None}
    assert after.keys() == before.keys()
    for k, (v, z) in before.items():
        assert after[k][0] == pytest.approx(v) and after[k][1] == pytest.approx(z)
    assert np.array_equal(s.residues.ribbon_colors, colors)


def test_repeated_runs_replace_attributes(cx, random_model):
    open_emd3488(cx)
    run(cx, f"defmap #1 structure #2 model {random_model}")
    first = [r.defmap for r in cx.models.list(model_id=(2,))[0].residues]
    run(cx, f"defmap #1 structure #2/A model {random_model}")
    s = cx.models.list(model_id=(2,))[0]
    assert all(r.defmap is None for r in s.residues if r.chain_id != "A")
    keys = [m for m in cx.models.list() if type(m).__name__ == "ColorKeyModel"]
    assert len(keys) <= 1
    assert any(v is not None for v in first)


def test_voxel_mode_creates_dynamics_volume(cx, random_model):
    vol, _ = open_emd3488(cx)
    run(cx, "close #2")
    before = vol.full_matrix().copy()
    res = run(cx, f"defmap #1 model {random_model}")
    dyn = res.dynamics
    assert dyn in cx.models.list()
    assert res.voxels > 1000
    m = dyn.full_matrix()
    assert np.isfinite(m).all() and m.std() > 0
    assert np.array_equal(vol.full_matrix(), before)  # the input map is never modified
    # the dynamics map holds the per-patch prediction at a scored voxel (dense == per-patch)
    assert dyn.data.step == (1.5, 1.5, 1.5)



@pytest.mark.parametrize("command, keyword, message", [
    ("defmap #1 structure #2 mapResolution 0", "mapResolution", "Must be greater than 0"),
    ("defmap #1 mapResolution 100", "mapResolution", "Must be less than 100"),
    ("defmap #1 structure #2 mapResolution nan", "mapResolution", "Expected a finite number, not nan"),
    ("defmap #1 batchSize 0", "batchSize", "Must be greater than or equal to 1"),
    ("defmap #1 structure #2 batchSize 1000001", "batchSize", "Must be less than or equal to 1000000"),
    ("defmap models mapResolution 250", "mapResolution", "Must be less than 100"),
    ("defmap compare #1,1 structure #2 distance 0", "distance", "Must be greater than 0"),
    ("defmap compare #1,1 structure #2 distance 50.5", "distance", "Must be less than or equal to 50"),
])
def test_out_of_range_arguments_are_refused_when_parsed(cx, random_model, command, keyword, message):
    """Ranges are ChimeraX Bounded arguments: refused before any work, naming the keyword; nothing is stored."""
    from chimerax.core.errors import UserError
    _, s = open_emd3488(cx)
    with pytest.raises(UserError) as e:
        run(cx, f"{command} model {random_model}" if "models" not in command else command, log=False)
    assert str(e.value) == f'Invalid "{keyword}" argument: {message}'
    assert all(getattr(r, "defmap", None) is None for r in s.residues)
    assert len(cx.models.list(model_id=(3,))) == 0  # no dynamics map


@pytest.mark.parametrize("kw, message", [
    ({"map_resolution": 0.0}, "mapResolution must be between 0 and 100 Å, not 0"),
    ({"map_resolution": float("nan")}, "mapResolution must be between 0 and 100 Å, not nan"),
    ({"batch_size": 0}, "batchSize must be between 1 and 1,000,000, not 0"),
])
def test_python_callers_get_the_same_ranges_checked(cx, random_model, kw, message):
    """predict_structure and predict_voxels, called from Python (no parser), refuse the same values."""
    from chimerax.core.errors import UserError

    from chimerax.defmap.predict import predict_structure, predict_voxels
    vol, s = open_emd3488(cx)
    for call in (lambda: predict_structure(cx, vol, s.atoms, str(random_model), **kw),
                 lambda: predict_voxels(cx, vol, str(random_model), **kw)):
        with pytest.raises(UserError, match=f"^{message}$"):
            call()

def test_make_run_executes_cxc_script(tmp_path, random_model):
    mrc, pdb = shared_path("emdb", "emd_3488.mrc"), shared_path("emdb", "5me2.pdb")
    script = tmp_path / "job.cxc"
    script.write_text(f"open {mrc}\nopen {pdb}\ndefmap #1 structure #2 model {random_model}\n"
                      f"save {tmp_path / 'out.defattr'} attrName r:defmap models #2\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(["make", "-s", "run", f"SCRIPT={script}"], cwd=root, capture_output=True, text=True,
                          encoding="utf-8", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CPUExecutionProvider" in proc.stdout or "CUDAExecutionProvider" in proc.stdout
    assert (tmp_path / "out.defattr").read_text().count("\n\t") > 500


def _run_script(tmp_path, text: str) -> subprocess.CompletedProcess:
    """``make run``'s harness on a one-off script."""
    script = tmp_path / "script.cxc"
    script.write_text(text)
    return subprocess.run([sys.executable, str(TOOLS / "headless.py"), str(script)], capture_output=True,
                          text=True, encoding="utf-8", timeout=300)


@pytest.mark.parametrize("line, message", [("defmap #1", "Error:"),
                                           ("combine #1", "Error: Unknown command: combine #1")])
def test_bad_script_line_fails_make_run_with_one_line(tmp_path, line, message):
    """A bad line, or a standard ChimeraX command the harness does not register, stops the script with a one-line
    error (for the missing command, ChimeraX's own: the real toolshed answers the lookup), not a traceback."""
    proc = _run_script(tmp_path, line + "\n")
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_no_model_installed_is_one_sentence(cx, monkeypatch, tmp_path):
    from chimerax.core.errors import UserError

    from chimerax.defmap import network
    open_emd3488(cx)
    monkeypatch.setattr(network, "PACKAGE_MODEL_DIR", tmp_path)
    monkeypatch.setenv(network.MODEL_DIR_ENV, "")
    colors = cx.models.list(model_id=(2,))[0].atoms.colors.copy()
    with pytest.raises(UserError, match=r"^No DEFMap model is installed; .*\.?$"):
        run(cx, "defmap #1 structure #2")
    assert np.array_equal(cx.models.list(model_id=(2,))[0].atoms.colors, colors)


def _small_scene(cx, tmp_path):
    """#1 a synthetic map with density at #2, a 20-residue helix (fast, no shared data needed)."""
    from .hostile import MapSpec, build_map, heavy_xyz_from_pdb, helix_pdb
    pdb = helix_pdb(20)
    build_map(cx, MapSpec(), heavy_xyz_from_pdb(pdb))
    (tmp_path / "h.pdb").write_text(pdb)
    run(cx, f"open {tmp_path / 'h.pdb'}", log=False)
    return cx.models.list(model_id=(2,))[0]


def _color_keys(session):
    return [m for m in session.models.list() if type(m).__name__ == "ColorKeyModel"]


def test_session_restore_keeps_atom_values_all_colors_and_key(cx, random_model, tmp_path):
    s = _small_scene(cx, tmp_path)
    run(cx, f"defmap #1 structure #2 model {random_model}", log=False)
    atoms = {(a.residue.number, a.name): a.defmap for a in s.atoms}
    colors = (s.atoms.colors.copy(), s.residues.ribbon_colors.copy(), s.residues.ring_colors.copy())
    path = tmp_path / "state.cxs"
    run(cx, f"save {path}", log=False)
    run(cx, "close", log=False)
    run(cx, f"open {path}", log=False)
    s2 = [m for m in cx.models.list() if m.name == "h.pdb"][0]
    assert {(a.residue.number, a.name): a.defmap for a in s2.atoms} == pytest.approx(atoms)
    for before, after in zip(colors, (s2.atoms.colors, s2.residues.ribbon_colors, s2.residues.ring_colors)):
        assert np.array_equal(before, after)
    assert len(_color_keys(cx)) == 1


def test_repeated_runs_replace_attributes_keys_and_dynamics_maps(cx, random_model, tmp_path):
    from chimerax.atomic import Atom, Residue
    s = _small_scene(cx, tmp_path)
    for _ in range(3):
        res = run(cx, f"defmap #1 structure #2 model {random_model}", log=False)
    for _ in range(2):
        vox = run(cx, f"defmap #1 model {random_model} level 0.05", log=False)
    for cls, names in ((Atom, ["defmap"]), (Residue, ["defmap", "defmap_z"])):
        registered = list(cls._attr_registration.reg_attr_info)
        for n in names:
            assert registered.count(n) == 1, (cls.__name__, registered)
    assert len(_color_keys(cx)) == 1
    dyn = [m for m in cx.models.list() if m.name.endswith("DEFMap dynamics")]
    assert dyn == [vox.dynamics]
    assert [r.defmap for r in s.residues] == pytest.approx(list(res.residue_values))
