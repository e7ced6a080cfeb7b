"""Models that read the fitted model's density as a second channel and give a variance, run by the bundle.

A stand-in with the shipped architecture (2 input channels, 2 outputs: mean and log-variance) and fixed random
weights, built with onnx.helper; the bundle reads it without the onnx package (onnxruntime and the side file).
"""

from __future__ import annotations

import numpy as np
import pytest
from chimerax.core.commands import run
from chimerax.core.errors import UserError

from chimerax.defmap import network
from chimerax.defmap import preprocess as pp

from .helpers import add_map, fcn_onnx_model, shared_path, simulate_map, simulated_1aku

SPEC = pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)
LAYERS = ((2, 8, 3), (8, 8, 3), (8, 16, 3), (16, 16, 4), (16, 8, 1), (8, 2, 1))


def two_channel_model(path, seed=0, calibration=None):
    """The shipped architecture reading map + model density and giving mean and log-variance (around exp(-3))."""
    return fcn_onnx_model(path, SPEC, seed=seed, name="standin-mapmodel-5A", layers=LAYERS, last_bias={1: -3.0},
                          metadata={"input_channels": ["density", "model_density"],
                                    "outputs": ["log10_rmsf_angstrom", "log_variance"],
                                    "calibration": calibration or {"sd_scale": 1.5, "anm_weight": 0.5,
                                                                   "sd_slope": 0.4}})


@pytest.fixture(scope="module")
def model2(tmp_path_factory):
    return two_channel_model(tmp_path_factory.mktemp("m2") / "mapmodel5.onnx")


@pytest.fixture(scope="module")
def prepared():
    xyz, m, x2i, _ = simulated_1aku()
    prep = pp.prepare_points(m, x2i, xyz, SPEC)
    return prep, xyz


def test_metadata_channels_outputs_calibration(model2):
    info = network.read_model_info(model2)
    assert info.channels == ("density", "model_density") and info.needs_structure
    assert info.outputs == ("log10_rmsf_angstrom", "log_variance") and info.has_variance
    assert info.calibration["sd_scale"] == 1.5
    plain = network.ModelInfo(model2, "x", SPEC, "log10_rmsf_angstrom", True)
    assert network.choose_model([plain, info], 4.0, structure=True) is info
    assert network.choose_model([plain, info], 4.0, structure=False) is plain
    with pytest.raises(network.ModelError, match="map-only"):
        network.choose_model([info], 4.0, structure=False)
    with pytest.raises(network.ModelError, match="needs a structure"):
        network.resolve_model(str(model2), 4.0, structure=False)


def test_dense_equals_patches_with_two_channels_and_a_variance(model2, prepared):
    prep, xyz = prepared
    info = network.read_model_info(model2)
    p = network.Predictor(info, device="cpu")
    grid = pp.Grid(pp.stack_channels(prep, info.channels, xyz, np.full(len(xyz), 6.0), info.spec),
                   prep.grid.origin, prep.grid.voxel_size)
    dense = p.predict_dense(grid, prep.centers)
    lv_dense = p.last_log_variance.copy()
    patches = p.predict_patches(grid, prep.centers)
    assert np.allclose(dense, patches, atol=1e-5) and np.allclose(lv_dense, p.last_log_variance, atol=1e-5)
    shared = p.predict_centers(grid, prep.centers)  # a plain conv chain: shared features (test_sparse_channels)
    assert p.method == "shared" and np.allclose(shared, dense, atol=1e-5)
    assert np.allclose(p.last_log_variance, lv_dense, atol=1e-5)
    assert np.isfinite(lv_dense).all() and lv_dense.std() > 0


@pytest.mark.usefixtures("network_units")
def test_structure_mode_reads_the_model_channel_and_uses_the_variance(cx, model2, tmp_path):
    from chimerax.pdb import open_pdb
    pdb = shared_path("md_reference", "1ail_A.pdb")
    s = open_pdb(cx, str(pdb))[0][0]
    cx.models.add([s])
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    values, origin = simulate_map(heavy.coords, np.full(len(heavy), 1.0), resolution=5.0, noise=0.2, seed=2)
    v = add_map(cx, values, origin)
    res = run(cx, f"defmap #{v.id_string} structure #{s.id_string} model {model2} uncertainty true color false")
    assert res.atom_sd is not None and res.atom_rotation_values is None  # one pass, SD from the variance head
    info = network.read_model_info(model2)
    # the same numbers by hand: preprocess, model channel, dense run
    prep = pp.prepare_points(values, pp.grid_transforms(origin, (1.0,) * 3)[0], heavy.coords, info.spec)
    x = pp.stack_channels(prep, info.channels, heavy.coords, pp.element_weights(heavy.element_names), info.spec)
    p = network.Predictor(info, device="cpu")
    want = p.predict_dense(pp.Grid(x, prep.grid.origin, prep.grid.voxel_size), prep.centers)
    at = want[prep.point_to_center]
    z = (at - at.mean()) / at.std()  # sd_slope: the SD grows with the prediction's z-score over the atoms
    sd_want = np.exp(0.5 * p.last_log_variance[prep.point_to_center]) * 1.5 * np.exp(0.4 * z)
    assert (prep.point_to_center >= 0).all()
    assert np.allclose(res.atom_values, at, atol=1e-5)
    assert np.allclose(res.atom_sd, sd_want, rtol=1e-4, atol=1e-6)
    sds = np.array([r.defmap_sd for r in res.residues])
    assert (sds > 0).all()
    # residueAtoms ca: the residue value is the C-alpha's own value
    ca = run(cx, f"defmap #{v.id_string} structure #{s.id_string} model {model2} residueAtoms ca color false "
                 "attribute dca")
    by_atom = dict(zip(ca.atoms, ca.atom_values))
    for r, val in list(zip(ca.residues, ca.residue_values))[:10]:
        assert val == pytest.approx(by_atom[r.find_atom("CA")], abs=1e-6)
    # normalModes uses the model's fitted ANM weight
    nm = run(cx, f"defmap #{v.id_string} structure #{s.id_string} model {model2} normalModes true color false "
                 "attribute dnm")
    from chimerax.defmap import combination
    ok = np.isfinite(nm.nma_residue_values)
    want_c = combination.combine(nm.map_residue_values, nm.nma_residue_values, 0.5)
    assert np.allclose(nm.residue_values[ok], want_c[ok])
    with pytest.raises(UserError, match="needs a structure"):
        run(cx, f"defmap #{v.id_string} model {model2}")


@pytest.mark.usefixtures("network_units")
def test_structure_mode_combines_the_density_contrast_at_the_fitted_weight(cx, model2, tmp_path):
    """calibration.contrast_weight c: residue values are z(network) + c z(model density - map density), rescaled to
    the network's mean and SD (combination.combine); atoms move with their residue; c = 0 leaves the network alone."""
    from chimerax.pdb import open_pdb

    from chimerax.defmap import combination
    from chimerax.defmap.residues import residue_means, residue_subset_means
    s = open_pdb(cx, str(shared_path("md_reference", "1ail_A.pdb")))[0][0]
    cx.models.add([s])
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    values, origin = simulate_map(heavy.coords, np.full(len(heavy), 1.0), resolution=5.0, noise=0.2, seed=3)
    v = add_map(cx, values, origin)
    withc = two_channel_model(tmp_path / "contrast.onnx", calibration={"sd_scale": 1.0, "contrast_weight": 0.3})
    spec = f"defmap #{v.id_string} structure #{s.id_string} color false model "
    base = run(cx, spec + str(model2) + " attribute dbase")
    res = run(cx, spec + str(withc) + " attribute dcon")
    assert base.network_residue_values is None and base.contrast_weight == 0.0
    assert res.contrast_weight == 0.3 and np.allclose(res.network_residue_values, base.residue_values)
    info = network.read_model_info(withc)
    prep = pp.prepare_points(values, pp.grid_transforms(origin, (1.0,) * 3)[0], heavy.coords, info.spec)
    x = pp.stack_channels(prep, info.channels, heavy.coords, pp.element_weights(heavy.element_names), info.spec)
    contrast = (x[1] - x[0])[tuple(prep.centers.T)][prep.point_to_center]
    assert res.atoms == heavy  # every atom inside the map, in the same order
    rl, heavy_means = residue_means(res.atoms, contrast)
    con = residue_subset_means(res.atoms, contrast, rl, heavy_means, "backbone")
    want = combination.combine(base.residue_values, con, 0.3)
    assert np.allclose(res.residue_values, want)
    assert np.corrcoef(want, con)[0, 1] > np.corrcoef(base.residue_values, con)[0, 1]
    shift = (want - base.residue_values)[res.residues.indices(res.atoms.residues)]
    assert np.allclose(res.atom_values, base.atom_values + shift, atol=1e-5)
    assert np.allclose([r.dcon for r in res.residues], want)
    j = res.as_dict()  # returnJson: the combined value and the network's own
    assert j["contrast_weight"] == 0.3 and j["residues"][0]["network"] == pytest.approx(base.residue_values[0])
    assert j["residues"][0]["value"] == pytest.approx(want[0]) and "network" not in base.as_dict()["residues"][0]


def test_rigid_density_and_native_contrast():
    """rigid_density_at is the molmap sum over all atoms (chunked or not); native_contrast ranks atoms the map blurs
    beyond a rigid model above the rest, at the map's own resolution, where the network's 5 Å lattice is coarser."""
    from chimerax.defmap.combination import combine, combine_terms
    rng = np.random.default_rng(1)
    xyz = np.cumsum(rng.normal(0, 1, (400, 3)) * 3.8 / np.sqrt(3), axis=0)
    w = rng.choice([6.0, 7.0, 8.0], 400)
    sigma = pp.SIGMA_PER_RESOLUTION * 3.0
    d2 = ((xyz[:, None] - xyz[None]) ** 2).sum(-1)
    brute = (w[None] * np.exp(-d2 / (2 * sigma ** 2)) * (d2 <= (3.5 * sigma) ** 2)).sum(1)
    assert np.allclose(pp.rigid_density_at(xyz, w, 3.0), brute)
    assert np.allclose(pp.rigid_density_at(xyz, w, 3.0, chunk=37), brute)
    rmsf = np.where(np.arange(400) < 200, 0.3, 2.5)  # the second half moves
    values, origin = simulate_map(xyz, rmsf, resolution=3.0, voxel=0.8)
    x2i = pp.grid_transforms(origin, (0.8,) * 3)[0]
    at = pp.map_values_at(values, x2i, xyz)
    con = pp.native_contrast(at, pp.rigid_density_at(xyz, np.ones(400), 3.0))
    assert np.nanmean(con[200:]) > np.nanmean(con[:200]) + 1.0
    assert np.isnan(pp.native_contrast(np.ones(5), np.arange(5.0))).all()  # a flat map has no contrast
    a, b, c = rng.normal(size=(3, 50))
    assert np.allclose(combine_terms(a, [(b, 0.4)]), combine(a, b, 0.4))
    want = np.mean(a) + np.std(a) * zs(zs(a) + 0.4 * zs(b) + 0.7 * zs(c))
    assert np.allclose(combine_terms(a, [(b, 0.4), (c, 0.7), (a, 0.0)]), want)


def zs(v):
    return (v - v.mean()) / v.std()


def test_structure_mode_combines_the_contrast_at_map_resolution(cx, model2, tmp_path):
    """calibration.native_contrast_weight n: residue values are z(network) + n z(native contrast), the rigid model's
    density at the given map resolution against the map's own values at the atoms (at the model's filter resolution
    when none is given); log and returnJson say so."""
    from chimerax.pdb import open_pdb

    from chimerax.defmap import combination
    from chimerax.defmap.residues import residue_means, residue_subset_means
    s = open_pdb(cx, str(shared_path("md_reference", "1ail_A.pdb")))[0][0]
    cx.models.add([s])
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    rmsf = np.where(np.arange(len(heavy)) % 97 < 40, 2.0, 0.5)
    values, origin = simulate_map(heavy.coords, rmsf, resolution=3.5, noise=0.1, seed=4)
    v = add_map(cx, values, origin)
    withn = two_channel_model(tmp_path / "native.onnx", calibration={"sd_scale": 1.0, "native_contrast_weight": 0.6})
    spec = f"defmap #{v.id_string} structure #{s.id_string} color false model "
    base = run(cx, spec + str(model2) + " attribute nbase")
    x2i = pp.grid_transforms(origin, (1.0,) * 3)[0]
    for given, used in ((" mapResolution 3.5", 3.5), ("", 5.0)):
        res = run(cx, spec + str(withn) + given + " attribute nnat")
        assert res.native_contrast_weight == 0.6 and res.native_resolution == used and res.contrast_weight == 0.0
        assert res.atoms == heavy
        native = pp.native_contrast(pp.map_values_at(values, x2i, heavy.coords),
                                    pp.rigid_density_at(heavy.coords, pp.element_weights(heavy.element_names), used))
        rl, heavy_means = residue_means(res.atoms, native)
        nat = residue_subset_means(res.atoms, native, rl, heavy_means, "backbone")
        if given:
            base_given = run(cx, spec + str(model2) + given + " attribute nbase")
            want = combination.combine(base_given.residue_values, nat, 0.6)
        else:
            want = combination.combine(base.residue_values, nat, 0.6)
        assert np.allclose(res.residue_values, want)
        assert np.allclose([r.nnat for r in res.residues], want)
        j = res.as_dict()
        assert j["native_contrast_weight"] == 0.6 and j["native_contrast_resolution"] == used
    assert base.native_contrast_weight == 0.0 and base.as_dict()["native_contrast_resolution"] is None


def test_sd_run_factor_and_disagreement_when_the_calibration_asks(cx, tmp_path, monkeypatch):
    """md-calibrate's optional SD terms (off for the shipped models): with ``sd_run`` "expected_r" a run told to
    expect r 0.6 instead of 0.9 reports SDs larger by the ratio of their error factors, residue for residue; with
    ``sd_disagreement`` c the atom SD gains exp(c x its residue's disagreement with the model's packing)."""
    from chimerax.pdb import open_pdb

    from chimerax.defmap import expected
    model = two_channel_model(tmp_path / "sdrun5.onnx", calibration={"sd_scale": 1.5, "sd_slope": 0.4,
                                                                     "sd_run": "expected_r"})
    s = open_pdb(cx, str(shared_path("md_reference", "1ail_A.pdb")))[0][0]
    cx.models.add([s])
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    values, origin = simulate_map(heavy.coords, np.full(len(heavy), 1.0), resolution=5.0, noise=0.2, seed=2)
    v = add_map(cx, values, origin)
    sds = {}
    for r in (0.9, 0.6):
        monkeypatch.setattr(expected, "expected", lambda mode, f, r=r: expected.Expected(r, r - 0.1, r + 0.05, f))
        res = run(cx, f"defmap #{v.id_string} structure #{s.id_string} model {model} uncertainty true color false")
        sds[r] = np.array([x.defmap_sd for x in res.residues])
    assert np.allclose(sds[0.6], sds[0.9] * expected.error_factor(0.6) / expected.error_factor(0.9), rtol=1e-6)
    head, pred, apart = np.full(5, 0.2), np.arange(5.0), np.array([0.0, 0.5, 1.0, 2.0, 0.0])
    cal = {"sd_scale": 1.5, "sd_slope": 0.4}
    with_c = network.calibrated_sd(head, pred, {**cal, "sd_disagreement": 0.3}, 2.0, apart)
    assert np.allclose(with_c, network.calibrated_sd(head, pred, cal) * 2.0 * np.exp(0.3 * apart))


def test_sd_run_factor_from_the_networks_agreement_with_the_map(cx, tmp_path):
    """With ``sd_run`` "agree_raw" every residue's SD is the plain calibration's times exp(slope x (the run's
    agree_raw - centre)), the agreement the run measured (its expected r's features); without the feature the
    factor is 1."""
    from types import SimpleNamespace

    from chimerax.pdb import open_pdb

    from chimerax.defmap import recipe
    cal = {"sd_scale": 1.5, "sd_slope": 0.4}
    plain = two_channel_model(tmp_path / "agree0.onnx", calibration=cal)
    agree = two_channel_model(tmp_path / "agree1.onnx", calibration={**cal, "sd_run": "agree_raw",
                                                                      "sd_run_slope": -2.0, "sd_run_centre": 0.5})
    s = open_pdb(cx, str(shared_path("md_reference", "1ail_A.pdb")))[0][0]
    cx.models.add([s])
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    values, origin = simulate_map(heavy.coords, np.full(len(heavy), 1.0), resolution=5.0, noise=0.2, seed=2)
    v = add_map(cx, values, origin)
    spec = f"defmap #{v.id_string} structure #{s.id_string} uncertainty true color false model "
    sds = []
    for model in (plain, agree):  # each run rewrites the residues' defmap_sd: read it before the next
        res = run(cx, spec + str(model))
        sds.append(np.array([r.defmap_sd for r in res.residues]))
    sd_a, sd_b = sds
    x = res.expected.features["agree_raw"]
    assert np.isfinite(x) and x != 0.5
    assert np.allclose(sd_b, sd_a * np.exp(-2.0 * (x - 0.5)), rtol=1e-6)
    info = SimpleNamespace(calibration={"sd_run": "agree_raw", "sd_run_slope": -2.0, "sd_run_centre": 0.5})
    no_feature = SimpleNamespace(run_features={}, expected=None, residue_values=np.zeros(3))  # as AtomPrediction
    assert recipe.run_sd_factor(info, no_feature) == 1.0


def _chain_map(cx, seed: int):
    """A 600-residue random-walk chain's 5 Å map, opened in ChimeraX: (its values, the volume), for voxel mode."""
    rng = np.random.default_rng(seed)
    xyz = np.cumsum(rng.normal(0, 1, (600, 3)) * 3.8 / np.sqrt(3), axis=0)
    values, origin = simulate_map(xyz, np.full(600, 0.8), resolution=5.0, noise=0.1, seed=seed + 1)
    return values, add_map(cx, values, origin)


def test_voxel_mode_combines_the_maps_packing_at_the_fitted_weight(cx, tmp_path):
    """calibration.map_packing_weight k: voxel mode reports z(network) + k z(the contour's packing,
    map_shape.map_packing), rescaled to the network's mean and SD, with normalModes adding its term beside it; the
    log and returnJson say so; a model without the weight reports the network alone."""
    from chimerax.defmap import combination, map_shape, nma
    from chimerax.defmap.predict import predict_voxels
    values, v = _chain_map(cx, 7)
    plain_model = fcn_onnx_model(tmp_path / "map5p0.onnx", SPEC, seed=3, name="standin-5A")
    model = fcn_onnx_model(tmp_path / "map5p.onnx", SPEC, seed=3, name="standin-5A",
                           metadata={"calibration": {"map_packing_weight": 0.7, "map_anm_weight": 0.25}})
    level = float(np.quantile(values, 0.9))
    plain = predict_voxels(cx, v, str(plain_model), None, "cpu", None, level)
    base, prep = plain.values, plain.prep
    res = predict_voxels(cx, v, str(model), None, "cpu", None, level)
    got, prep2, stages = res.values, res.prep, res.stages
    assert np.array_equal(prep.centers, prep2.centers) and "packing" in stages and "normal_modes" not in stages
    assert res.map_packing_weight == 0.7 and res.map_anm_weight == 0.0 and res.dynamics is None
    pk = map_shape.map_packing(prep.grid.values, len(prep.centers), SPEC.voxel_size, prep.centers)
    assert np.isfinite(pk).all() and pk.std() > 0
    assert np.allclose(got, combination.combine_terms(base, [(pk, 0.7)]))
    both = predict_voxels(cx, v, str(model), None, "cpu", None, level, normal_modes=True).values
    fl = nma.map_elastic_network(prep.grid.values, len(prep.centers), SPEC.voxel_size, prep.centers)
    assert np.allclose(both, combination.combine_terms(base, [(pk, 0.7), (fl, 0.25)]))
    res = run(cx, f"defmap #{v.id_string} model {model} level {level} color false")
    assert res.map_packing_weight == 0.7 and res.as_dict()["map_packing_weight"] == 0.7
    assert np.allclose(res.dynamics.full_matrix()[tuple(prep.centers.T)], got, atol=1e-5)
    plain = run(cx, f"defmap #{v.id_string} model {plain_model} level {level} color false")
    assert plain.map_packing_weight == 0.0 and "packing" not in plain.stages


def test_voxel_mode_combines_the_maps_own_intensity_at_the_fitted_weight(cx, tmp_path):
    """calibration.map_intensity_weight w: voxel mode adds w z(minus the map's own value at each scored voxel, read
    trilinearly on the map's grid, not the network's low-passed lattice) beside the packing; the log and returnJson
    name it."""
    from chimerax.defmap import combination, map_shape
    from chimerax.defmap import preprocess as pp
    from chimerax.defmap.predict import predict_voxels
    from chimerax.defmap.recipe import centre_xyz

    from .helpers import run_logged
    values, v = _chain_map(cx, 9)
    plain_model = fcn_onnx_model(tmp_path / "map5i0.onnx", SPEC, seed=3, name="standin-5A")
    model = fcn_onnx_model(tmp_path / "map5i.onnx", SPEC, seed=3, name="standin-5A",
                           metadata={"calibration": {"map_packing_weight": 0.7, "map_intensity_weight": 0.5}})
    level = float(np.quantile(values, 0.9))
    plain = predict_voxels(cx, v, str(plain_model), None, "cpu", None, level)
    res = predict_voxels(cx, v, str(model), None, "cpu", None, level)
    prep = plain.prep
    assert np.array_equal(prep.centers, res.prep.centers) and res.map_intensity_weight == 0.5
    x2i = np.array(v.data.xyz_to_ijk_transform.matrix, dtype=np.float64)
    raw = -pp.map_values_at(v.full_matrix(), x2i, centre_xyz(prep))
    assert np.isfinite(raw).all() and raw.std() > 0
    pk = map_shape.map_packing(prep.grid.values, len(prep.centers), SPEC.voxel_size, prep.centers)
    assert np.allclose(res.values, combination.combine_terms(plain.values, [(pk, 0.7), (raw, 0.5)]))
    out, text = run_logged(cx, f"defmap #{v.id_string} model {model} level {level} color false")
    assert "the map's own intensity at each voxel (weight 0.5)" in text
    assert out.as_dict()["map_intensity_weight"] == 0.5


def test_voxel_mode_normal_modes_of_the_map_at_the_fitted_weight(cx, tmp_path):
    """Voxel mode has no model, so ``normalModes true`` takes normal modes of the map's own pseudo-atoms in the
    contour (nma.map_elastic_network): z(network) + w z(their log fluctuation), w = calibration.map_anm_weight,
    rescaled to the network's mean and SD; without it the network's values are untouched."""
    from chimerax.defmap import combination, map_shape, nma
    from chimerax.defmap.predict import predict_voxels
    values, v = _chain_map(cx, 5)
    model = fcn_onnx_model(tmp_path / "map5e.onnx", SPEC, seed=2, name="standin-5A",
                           metadata={"calibration": {"map_anm_weight": 0.5}})
    level = float(np.quantile(values, 0.9))
    first = predict_voxels(cx, v, str(model), None, "cpu", None, level)
    base, prep = first.values, first.prep
    res = predict_voxels(cx, v, str(model), None, "cpu", None, level, normal_modes=True)
    got, prep2, stages = res.values, res.prep, res.stages
    assert np.array_equal(prep.centers, prep2.centers) and "normal_modes" in stages
    fl = nma.map_elastic_network(prep.grid.values, len(prep.centers), SPEC.voxel_size, prep.centers)
    assert np.isfinite(fl).all()
    assert np.allclose(got, combination.combine(base, fl, 0.5))
    res = run(cx, f"defmap #{v.id_string} model {model} level {level} color false normalModes true")
    assert res.map_anm_weight == 0.5 and res.as_dict()["normal_modes"] and res.as_dict()["map_anm_weight"] == 0.5
    assert res.pseudo_atoms == len(map_shape.map_pseudo_atoms(prep.grid.values, len(prep.centers), SPEC.voxel_size)) > 4
    assert np.allclose(res.dynamics.full_matrix()[tuple(prep.centers.T)], got, atol=1e-5)
    plain = run(cx, f"defmap #{v.id_string} model {model} level {level} color false")
    assert plain.map_anm_weight == 0.0 and not plain.as_dict()["normal_modes"]
    assert np.allclose(plain.dynamics.full_matrix()[tuple(prep.centers.T)], base, atol=1e-5)
    n_models = len(cx.models.list())
    top = float(np.sort(values.ravel())[-12])  # a dozen voxels: too few pseudo-atoms
    with pytest.raises(UserError, match="too few pseudo-atoms"):
        run(cx, f"defmap #{v.id_string} model {model} level {top} normalModes true")
    assert len(cx.models.list()) == n_models


def test_two_channel_model_runs_without_the_onnx_package(model2, tmp_path):
    """ChimeraX ships no onnx package: metadata come through onnxruntime, the conv chain and its stage graphs from
    the side file (numpy), and shared features give the mean and the variance."""
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "import numpy as np\n"
        "from chimerax.defmap import network as m, preprocess as pp\n"
        f"info = m.read_model_info({str(model2)!r})\n"
        "assert info.needs_structure and info.has_variance\n"
        "p = m.Predictor(info, device='cpu')\n"
        "x = np.abs(np.random.default_rng(0).normal(size=(2, 24, 24, 24))).astype(np.float32)\n"
        "c = np.array([[8, 9, 10], [12, 12, 12]])\n"
        "y = p.predict_centers(pp.Grid(x, np.zeros(3), 1.5), c)\n"
        "assert np.isfinite(y).all() and p.last_log_variance is not None and p.method == 'shared'\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
