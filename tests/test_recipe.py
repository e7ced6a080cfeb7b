"""The prediction recipe is one call on plain arrays: given what a script reads itself (map values and transform, atom
coordinates, elements, names and any integer residue ids), it gives what the ``defmap`` command reports."""

from __future__ import annotations

import numpy as np
from chimerax.core.commands import run

from chimerax.defmap import network, recipe

from .helpers import shared_path

TOL = 1e-6  # a fresh onnxruntime session may sum in another order (test_determinism)


def _arrays(vol):
    d = vol.data
    return vol.full_matrix(), np.array(d.xyz_to_ijk_transform.matrix), np.array(d.ijk_to_xyz_transform.matrix)


def test_structure_recipe_from_arrays_gives_what_the_command_reports(cx):
    """The whole map (not the subregion the command reads), residue ids that are not positions, the shipped
    map + model model with its density contrasts, normal modes and uncertainty."""
    from chimerax.atomic import Residue
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    vol, s = cx.models.list(model_id=(1,))[0], cx.models.list(model_id=(2,))[0]
    res = run(cx, "defmap #1 structure #2 mapResolution 3.2 normalModes true uncertainty true color false", log=False)
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    ca = s.atoms.filter((s.atoms.names == "CA") & (s.atoms.element_names == "C")
                        & (s.atoms.residues.polymer_types == Residue.PT_AMINO))
    ids = 1000 + 3 * s.residues.indices(s.residues)[::-1]  # any distinct integers, here in reverse order
    values, x2i, _ = _arrays(vol)
    p = recipe.predict_atoms(network.Predictor(res.model, "cpu"), values, x2i, heavy.coords, heavy.element_names,
                             heavy.names, ids[s.residues.indices(heavy.residues)], map_resolution=3.2, rotations=24,
                             ca=(ca.coords, ids[s.residues.indices(ca.residues)]))
    assert res.contrast_weight > 0 and res.native_contrast_weight > 0  # the contrasts are part of what is compared
    assert heavy.filter(p.scored) == res.atoms
    order = {int(i): k for k, i in enumerate(ids)}
    assert list(s.residues[np.array([order[int(i)] for i in p.residue_ids])]) == list(res.residues)
    np.testing.assert_allclose(p.atom_values, res.atom_values, rtol=0, atol=TOL)
    np.testing.assert_allclose(p.residue_values, res.residue_values, rtol=0, atol=TOL)
    np.testing.assert_allclose(p.network_residue_values, res.network_residue_values, rtol=0, atol=TOL)
    np.testing.assert_allclose(p.nma_residue_values, res.nma_residue_values, rtol=0, atol=TOL)
    np.testing.assert_allclose(p.residue_sd(), res.residue_sd, rtol=0, atol=TOL)
    assert p.residue_values.std() > 0 and np.isfinite(p.residue_sd()).all()
    sh = p.sharpness  # measured on the same part of the map whether the whole map or the command's subregion came in
    assert sh == res.sharpness and (sh.b_factor > 0) == (sh.target is not None and sh.slope > sh.target)
    assert res.as_dict()["blur_b_factor"] == round(sh.b_factor, 2)


def test_voxel_recipe_from_arrays_gives_what_the_command_reports(cx):
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    vol = cx.models.list(model_id=(1,))[0]
    res = run(cx, "defmap #1 mapResolution 3.2 level 0.05 normalModes true color false", log=False)
    values, x2i, i2x = _arrays(vol)
    p = recipe.predict_voxels(network.Predictor(res.model, "cpu"), values, x2i, i2x, 0.05, map_resolution=3.2,
                              normal_modes=True)
    assert np.array_equal(p.prep.centers, res.prep.centers) and len(p.values) > 1000
    assert p.level == res.level == 0.05  # a given level is the user's, on the map as given, blurred or not
    np.testing.assert_allclose(p.values, res.values, rtol=0, atol=TOL)
    assert (p.map_packing_weight, p.map_anm_weight, p.pseudo_atoms) == (res.map_packing_weight, res.map_anm_weight,
                                                                        res.pseudo_atoms) and p.pseudo_atoms > 0
    np.testing.assert_allclose(res.dynamics.full_matrix()[tuple(res.prep.centers.T)], res.values, rtol=0, atol=1e-6)
