"""validate-md scores what users get: its residue values for a map are the ``defmap`` command's, run through ChimeraX
on the same map and model, in structure mode (with and without normal modes) and in voxel mode.  Here, not in
training/tests: that process imports torch, and a ChimeraX session belongs to this one (docs/development.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("defmap_train", reason="validate-md lives in training/ (make train-env installs it)")

REPO = Path(__file__).resolve().parents[1]
MD = REPO.parent / "shared" / "data" / "md_reference"
TOL = 1e-6  # a fresh onnxruntime session may sum in another order (tests/test_determinism.py)
CHAIN = "1ab1_A"  # crambin, 46 residues: the smallest chain, with hydrogens in its PDB (the bundle drops them)


@pytest.mark.skipif(not MD.is_dir(), reason="../shared/data/md_reference is not here")
def test_validate_md_residue_values_are_the_commands(cx, tmp_path):
    from chimerax.core.commands import run
    from chimerax.map import volume_from_grid_data
    from chimerax.map_data import ArrayGridData

    from defmap_train import validate_md as vm
    from defmap_train.md_reference import load_chain

    st, _ = load_chain(MD, CHAIN)
    m = vm.cached_maps(MD, CHAIN, 1, cache=tmp_path)[0]  # the hard map, made here so no stale cache is read
    assert str(m["variant"]) == "hard"
    res, vs = float(m["resolution"]), float(m["voxel_size"])
    models = vm.load_models([REPO / "onnx_models"])
    two, one = vm.pick(models, res, structure=True), vm.pick(models, res, structure=False)
    assert two.needs_structure and not one.needs_structure

    run(cx, "close", log=False)
    vol = volume_from_grid_data(ArrayGridData(np.asarray(m["values"], dtype=np.float32), origin=tuple(m["origin"]),
                                              step=(vs,) * 3, name="sim"), cx, show_dialog=False)
    s = run(cx, f"open {MD / (CHAIN + '.pdb')}", log=False)[0]
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    assert len(heavy) == len(st.xyz) and list(heavy.names) == list(st.atom_name)
    heavy.coords = np.asarray(m["xyz"], dtype=np.float64)  # the model the map comes with, to the last bit
    v, a = f"#{vol.id_string}", f"#{s.id_string}"

    sm = vm.structure_mode(two, st, m, "backbone")
    plain = run(cx, f"defmap {v} structure {a} model {two.path} mapResolution {res} color false", log=False)
    modes = run(cx, f"defmap {v} structure {a} model {two.path} mapResolution {res} normalModes true color false",
                log=False)
    assert list(plain.residues.numbers) == [int(x.split(":")[1]) for x in st.res_label]
    np.testing.assert_allclose(sm["reported"], plain.residue_values, rtol=0, atol=TOL)
    np.testing.assert_allclose(sm["normal_modes"], modes.residue_values, rtol=0, atol=TOL)
    assert plain.contrast_weight > 0 and np.std(sm["reported"]) > 0.05
    assert np.abs(sm["normal_modes"] - sm["reported"]).max() > 0.01  # the two runs differ, so both are compared

    level = vm.model_volume_level(m["values"], st.n_res, vs)
    vox = run(cx, f"defmap {v} model {one.path} mapResolution {res} level {level!r} color false", log=False)
    ours = vm.voxel_mode(one, m, level).values_at(np.asarray(m["xyz"], dtype=np.float64))
    theirs = vox.dynamics.interpolated_values(heavy.scene_coords)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)
    assert np.std(ours) > 0.05
