"""The shipped recipe's pieces: the fitted-model density channel, two-channel / two-output networks (dense = per
patch, beta-NLL, ONNX export with channels in the metadata), the label engine's deviations, the CV's calibration fit,
soup, and validate-md's ONNX runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch (make train-env)")

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _toy_structure(n_res: int = 60, seed: int = 0):
    """A compact random-walk chain of C-alpha atoms plus one side-chain atom per residue."""
    from defmap_train.structure import Structure
    rng = np.random.default_rng(seed)
    ca = np.cumsum(rng.normal(0, 1, (n_res, 3)) * 3.8 / np.sqrt(3), axis=0)
    ca = 0.6 * ca + rng.normal(0, 0.3, ca.shape)
    cb = ca + rng.normal(0, 1.0, ca.shape)
    xyz = np.empty((2 * n_res, 3))
    xyz[0::2], xyz[1::2] = ca, cb
    names = np.array(["CA", "CB"] * n_res)
    ri = np.repeat(np.arange(n_res), 2)
    return Structure("toy", xyz, np.array(["C"] * (2 * n_res)), names, ri, ["ALA"] * n_res,
                     [f"A:{i + 1}" for i in range(n_res)], np.array(["A"] * n_res), np.zeros(2 * n_res))


def _prep(xyz, resolution=5.0):
    from chimerax.defmap import preprocess as pp
    from defmap_train.dataset import spec_for
    from defmap_train.maps import splat
    spec = spec_for(resolution)
    lo = xyz.min(axis=0) - 12.0
    shape = tuple(int(v) for v in (np.ceil((xyz.max(axis=0) - lo + 12.0) / 1.0).astype(int) + 1)[::-1])
    vals = splat(xyz, np.full(len(xyz), 6.0), lo, shape, 1.0)
    from scipy import ndimage
    vals = ndimage.gaussian_filter(vals, 0.225 * 3.0).astype(np.float32)
    x2i, _ = pp.grid_transforms(lo, (1.0,) * 3)
    return pp.prepare_points(vals, x2i, xyz, spec, map_resolution=3.0), spec, vals, x2i


def test_model_density_channel_matches_a_rigid_map():
    """A map simulated from the rigid model itself gives a model channel close to the map channel."""
    from chimerax.defmap import preprocess as pp
    st = _toy_structure()
    prep, spec, _, _ = _prep(st.xyz)
    mc = pp.model_density(prep, st.xyz, pp.element_weights(st.element), spec)
    assert mc.shape == prep.grid.values.shape and mc.dtype == np.float32
    sup = pp.support_mask(mc.shape, prep.centers, spec.box)
    assert np.corrcoef(mc[sup], prep.grid.values[sup])[0, 1] > 0.95
    x = pp.stack_channels(prep, ["density", "model_density"], st.xyz, pp.element_weights(st.element), spec)
    assert x.shape == (2, *mc.shape)
    with pytest.raises(ValueError, match="fitted atomic model"):
        pp.stack_channels(prep, ["density", "model_density"])


def test_two_channel_fcn_dense_equals_per_patch_and_nll():
    from chimerax.defmap.rotations import ROTATIONS
    from defmap_train.dataset import Item
    from defmap_train.model import build
    from defmap_train.train import channel_patches, loss_terms, predict_item
    torch.manual_seed(0)
    m = build("fcn", in_channels=2, outputs=2).eval()
    rng = np.random.default_rng(0)
    grid = np.abs(rng.normal(size=(26, 24, 28))).astype(np.float32)
    mgrid = np.abs(rng.normal(size=grid.shape)).astype(np.float32)
    centers = np.stack([rng.integers(5, s - 5, 30) for s in grid.shape], axis=1)
    it = Item("x", grid, centers, np.zeros(30, np.float32), np.zeros(1, int), np.zeros(1, np.float32),
              np.zeros(1, int), {}, "", mgrid)
    p = channel_patches(it.input(2), centers)
    assert p.shape == (30, 2, 10, 10, 10)
    for r in (0, 11):
        with torch.no_grad():
            ref = m(torch.from_numpy(np.ascontiguousarray(ROTATIONS[r](p)))).numpy().reshape(30, 2)
        assert np.allclose(predict_item(m, it, rotation=r, tile=8), ref[:, 0], atol=1e-5)
        assert np.allclose(predict_item(m, it, rotation=r, tile=8, output=1), ref[:, 1], atol=1e-5)
    # beta-NLL: finite, ignores NaN labels, and larger for a worse mean
    y = torch.tensor([[0.1], [float("nan")], [0.3]])
    good = torch.tensor([[0.1, -2.0], [0.0, 0.0], [0.3, -2.0]])
    bad = torch.tensor([[0.9, -2.0], [0.0, 0.0], [-0.5, -2.0]])
    assert torch.isfinite(loss_terms(good, y)) and loss_terms(bad, y) > loss_terms(good, y)


def test_two_channel_export_metadata_and_runner(tmp_path):
    """Export writes input_channels/outputs/calibration; the bundle's recipe, which validate-md calls, runs the file
    (no onnx package) and gives torch's values."""
    from chimerax.defmap import network, recipe
    from chimerax.defmap import preprocess as pp
    from defmap_train.export import export_onnx
    from defmap_train.model import build
    torch.manual_seed(0)
    m = build("fcn", in_channels=2, outputs=2)
    f = tmp_path / "m2.onnx"
    dev = export_onnx(m, f, "toy-mapmodel", 5.0, extra={"calibration": {"sd_scale": 1.3, "anm_weight": 0.25}})
    assert dev < 1e-5
    info = network.read_model_info(f)
    assert list(info.channels) == ["density", "model_density"] and info.needs_structure
    assert list(info.outputs) == ["log10_rmsf_angstrom", "log_variance"] and info.calibration["sd_scale"] == 1.3
    st = _toy_structure()
    _, _, vals, x2i = _prep(st.xyz)
    p = recipe.predict_atoms(network.Predictor(info, "cpu"), vals, x2i, st.xyz, st.element, st.atom_name,
                             st.res_index, map_resolution=3.0)
    mean, sd = p.network_atom_values, p.atom_head_sd
    assert p.scored.all() and np.isfinite(mean).all() and (sd > 0).all()
    # equal to torch on the same two-channel lattice
    prep = pp.prepare_points(vals, x2i, st.xyz, info.spec, map_resolution=3.0)
    x = pp.stack_channels(prep, list(info.channels), st.xyz, pp.element_weights(st.element), info.spec)
    from defmap_train.train import channel_patches
    with torch.no_grad():
        ref = m.eval()(torch.from_numpy(channel_patches(x, prep.centers))).numpy().reshape(-1, 2)
    assert np.allclose(mean, ref[prep.point_to_center, 0], atol=1e-4)
    assert np.allclose(sd, np.exp(0.5 * ref[prep.point_to_center, 1]), rtol=1e-3)


@pytest.mark.parametrize("jump", [0.0, 1.0])
def test_label_deviations_change_the_profile_and_frames_agree(jump):
    """The deviations make labels depart from ANM; the frames' RMSF (exact rotations, two-substate jumps) agrees with
    the exact label; temperature kept."""
    from defmap_train.ensembles import Deviations, anm_record
    st = _toy_structure(80)
    plain = anm_record(st, np.random.default_rng(1), mean_ca_rmsf=1.0, n_frames=0)
    dev = Deviations(strength=(1.0, 1.0), rock_probability=1.0, jump_probability=jump, mobile_segments=(2, 2))
    rec = anm_record(st, np.random.default_rng(1), mean_ca_rmsf=1.0, n_frames=400, deviations=dev)
    ca = st.ca_index()
    assert abs(rec["rmsf"][ca].mean() - 1.0) < 1e-6
    r = np.corrcoef(np.log(plain["rmsf"][ca]), np.log(rec["rmsf"][ca]))[0, 1]
    assert r < 0.97
    emp = np.sqrt((rec["frames"].astype(np.float64) ** 2).sum(axis=2).mean(axis=0))
    assert np.corrcoef(emp, rec["rmsf"])[0, 1] > 0.9
    assert abs(emp.mean() / rec["rmsf"].mean() - 1.0) < 0.1
    assert (any(s[0] == "jump" for s in json.loads(rec["anm"])["deviations"]["segments"])) == (jump > 0)


@pytest.mark.skipif(not (SHARED / "md_reference").is_dir(), reason="../shared/data/md_reference is not here")
def test_md_reference_chains_load_with_their_rmsf():
    """Every md_reference chain loads with one RMSF per residue (CHARMM HSD/HSE/HSP read as histidine)."""
    from defmap_train.md_reference import load_chain, md_chains
    names = md_chains(SHARED / "md_reference")
    assert len(names) == 17
    for n in names:
        st, md = load_chain(SHARED / "md_reference", n)
        assert len(md) == st.n_res and (md > 0).all()


def test_grouped_batches_and_within_map_variance_loss():
    """Grouped batches hold n // groups patches of each drawn map; with groups the log-variance term sees each map's
    errors less the map's mean error, so a per-map shift of the labels moves only the mean's MSE."""
    from defmap_train.dataset import Item
    from defmap_train.train import PatchSampler, loss_terms
    rng = np.random.default_rng(1)
    items = []
    for k in range(5):
        grid = rng.normal(size=(20, 20, 20)).astype(np.float32)
        centers = np.stack([rng.integers(5, 15, 40) for _ in range(3)], axis=1)
        items.append(Item(f"p{k}", grid, centers, rng.normal(size=40).astype(np.float32), np.zeros(1, int),
                          np.zeros(1, np.float32), np.zeros(1, int), {}, "", grid))
    x, y, g = PatchSampler(items, rng, channels=2, groups=4).batch(32)
    assert x.shape == (32, 2, 10, 10, 10) and y.shape == (32, 1)
    assert (np.bincount(g.numpy()) % 8 == 0).all()  # a map drawn twice gives 16
    x, y, g = PatchSampler(items, rng).batch(32)
    assert len(g) == 32 and x.shape[1] == 1
    torch.manual_seed(0)
    pred = torch.randn(12, 2)
    y = torch.randn(12, 1)
    y[3] = float("nan")
    group = torch.tensor([0] * 6 + [7] * 6)
    shift = torch.where(group == 7, 2.5, -1.0)[:, None]

    def var_term(p, yy):
        m = torch.isfinite(yy)
        return loss_terms(p, yy, group) - ((p[:, :1] - yy) ** 2)[m].mean()

    assert torch.isclose(var_term(pred, y), var_term(pred, y + shift), atol=1e-5)
    spread = y.clone()
    spread[group == 0] *= 3.0  # larger errors inside a map do change it
    assert not torch.isclose(var_term(pred, y), var_term(pred, spread), atol=1e-3)
    assert not torch.isclose(loss_terms(pred, y), loss_terms(pred, y + shift), atol=1e-3)


def test_dataset_kinds(tmp_path):
    """dw and clean samples are Debye-Waller maps (clean: no confounder), frame maps average frames; cache kept."""
    from defmap_train.ensembles import Deviations, anm_record, save_record
    from defmap_train.generate import dataset_one
    rec = anm_record(_toy_structure(40), np.random.default_rng(0), deviations=Deviations())
    rec["name"] = "toy"
    save_record(rec, tmp_path / "toy.npz")
    params = {}
    for kind in ("map", "dw", "clean"):
        msg = dataset_one((tmp_path / "toy.npz", tmp_path, 0, kind, (5.0,)))
        assert msg.startswith(f"toy__{kind}0.npz:")
        with np.load(tmp_path / f"toy__{kind}0.npz") as z:
            params[kind] = json.loads(str(z["map_params"]))
    assert params["map"]["source"] == "frames" and params["dw"]["source"] == "debye_waller"
    assert params["clean"]["source"] == "debye_waller" and params["clean"]["snr"] > 1e5
    assert params["dw"]["snr"] < 1e5
    assert dataset_one((tmp_path / "toy.npz", tmp_path, 0, "dw", (5.0,))) == "toy__dw0.npz exists"


def test_sd_probe_metrics():
    """sd-probe ranks validate-md's error: a feature equal to the abs residual ranks it perfectly, its negative
    anti-ranks it; segment-long errors have a high lag-1 autocorrelation, independent ones do not."""
    from defmap_train.diagnostics.sd_probe import _lag1
    from defmap_train.validate_md import sd_error_spearman
    rng = np.random.default_rng(3)
    pred = rng.normal(size=200)
    noise = np.convolve(rng.normal(size=220), np.ones(21) / 21, mode="valid")
    truth = 0.7 * pred + noise
    a, b = np.polyfit(pred, truth, 1)
    err = np.abs(truth - a * pred - b)
    assert sd_error_spearman(pred, err, truth) == pytest.approx(1.0)
    assert sd_error_spearman(pred, -err, truth) == pytest.approx(-1.0)
    assert _lag1(pred, truth) > 0.8
    assert abs(_lag1(pred, 0.7 * pred + rng.normal(size=200))) < 0.25


def test_sd_probe_levels_show_what_each_map_s_sd_level_carries():
    """Two maps whose errors differ in level but whose SDs do not: the pooled tercile ratio is 1 as reported and
    the error ratio once each map's SD level is its mean abs error; the shape within a map is kept."""
    from defmap_train.diagnostics.sd_probe import LEVELS, tercile_ratio
    ramp = np.linspace(1.0, 2.0, 30)
    maps = [{"sd": ramp.copy(), "abs_error": np.full(30, 1.0)}, {"sd": ramp.copy(), "abs_error": np.full(30, 3.0)}]
    assert tercile_ratio(maps, None) == pytest.approx(1.0)
    assert tercile_ratio(maps, LEVELS["oracle: the map's mean abs error"]) > 2.5


def test_sd_probe_halfway_r_lies_between_the_expected_and_the_actual():
    """The halfway row's r is between a map's expected and actual r, and is the actual r when they agree."""
    from defmap_train.diagnostics.sd_probe import halfway_r, run_spearman
    assert 0.5 < halfway_r({"expected_r": 0.5, "r": 0.9}) < 0.9
    assert halfway_r({"expected_r": 0.8, "r": 0.8}) == pytest.approx(0.8)
    maps = [{"expected_r": e, "r": r} for e, r in ((0.5, 0.9), (0.6, 0.7), (0.7, 0.8))]
    assert run_spearman(maps, halfway_r) == pytest.approx(1.0)
    assert run_spearman(maps, lambda m: m["expected_r"]) == pytest.approx(-0.5)


def test_soup_averages_matching_checkpoints(tmp_path):
    """soup writes, for every checkpoint of run A (finals and CV folds), the mean of the runs' weights; a missing or
    mismatched partner stops it."""
    from defmap_train.export import load_checkpoint, save_checkpoint
    from defmap_train.model import build
    from defmap_train.soup import soup
    torch.manual_seed(0)
    for run in ("a", "b", "c"):
        for rel, ch in (("mapmodel/map+model_5A.pt", 2), ("mapmodel/cv/map+model_fold0.pt", 2), ("map/map_5A.pt", 1)):
            save_checkpoint(tmp_path / run / rel, build("fcn", ch, 2), "fcn", 5.0, {})
    out = soup([tmp_path / "a", tmp_path / "b"], tmp_path / "s")
    assert sorted(p.relative_to(tmp_path / "s").as_posix() for p in out) == [
        "map/map_5A.pt", "mapmodel/cv/map+model_fold0.pt", "mapmodel/map+model_5A.pt"]
    for rel in ("map/map_5A.pt", "mapmodel/cv/map+model_fold0.pt"):
        sa, sb, ss = (load_checkpoint(tmp_path / r / rel)[0].state_dict() for r in ("a", "b", "s"))
        assert all(torch.allclose(ss[k], 0.5 * (sa[k] + sb[k])) for k in ss)
        assert not torch.allclose(ss["net.0.weight"], sa["net.0.weight"])
    soup([tmp_path / r for r in "abc"], tmp_path / "s3way")
    sa, sb, sc, ss = (load_checkpoint(tmp_path / r / "map/map_5A.pt")[0].state_dict() for r in ("a", "b", "c", "s3way"))
    assert all(torch.allclose(ss[k], (sa[k] + sb[k] + sc[k]) / 3) for k in ss)
    save_checkpoint(tmp_path / "b" / "map/map_5A.pt", build("fcn", 2, 2), "fcn", 5.0, {})
    with pytest.raises(SystemExit, match="different kinds"):
        soup([tmp_path / "a", tmp_path / "b"], tmp_path / "s2")
    (tmp_path / "b" / "map/map_5A.pt").unlink()
    with pytest.raises(SystemExit, match="missing"):
        soup([tmp_path / "a", tmp_path / "b"], tmp_path / "s4")


def test_soup_with_the_exported_models_a_run_started_from(tmp_path):
    """A folder of exported ONNX models as an ingredient: each checkpoint is averaged with the exported model of its
    kind and resolution (what ``--init-onnx`` started every fold and the final model from)."""
    pytest.importorskip("onnx")
    from defmap_train.export import export_onnx, load_checkpoint, save_checkpoint
    from defmap_train.model import build
    from defmap_train.soup import soup
    torch.manual_seed(1)
    start = build("fcn", 2, 2)
    export_onnx(start, tmp_path / "onnx" / "defmap_mapmodel_5A.onnx", "defmap-mapmodel-5A", 5.0)
    tuned = build("fcn", 2, 2)
    for rel in ("mapmodel/map+model_5A.pt", "mapmodel/cv/map+model_fold1.pt"):
        save_checkpoint(tmp_path / "run" / rel, tuned, "fcn", 5.0, {})
    out = soup([tmp_path / "run", tmp_path / "onnx"], tmp_path / "s")
    assert len(out) == 2
    s0, st, ss = start.state_dict(), tuned.state_dict(), load_checkpoint(out[1])[0].state_dict()
    assert all(torch.allclose(ss[k], 0.5 * (s0[k] + st[k]), atol=1e-6) for k in ss)
    save_checkpoint(tmp_path / "run6" / "mapmodel/map+model_6A.pt", tuned, "fcn", 6.0, {})
    with pytest.raises(SystemExit, match="no exported model"):
        soup([tmp_path / "run6", tmp_path / "onnx"], tmp_path / "s6")


def test_cv_fits_the_contrast_weights_only_where_the_contrasts_help():
    """summarize: the two contrasts' weights (on the network's lattice, at the map's own resolution) are fitted
    together to maximize the mean CV residue r (both 0 for map-only rows, whose contrasts are NaN), and for map-only
    rows the weight of the map's elastic network; the ANM weight is fitted on top of them."""
    from defmap_train.calibration import summarize
    rng = np.random.default_rng(0)

    def rows(contrast, native="unrelated", map_anm="absent", packing="absent", kind="map", r=0.5):
        out = []  # each term "informative", "misleading", "unrelated" or "absent"
        for p in range(6):
            lab = np.convolve(rng.normal(size=120), np.ones(5) / 5, "same")
            pr = lab + rng.normal(0, 0.3, 120)
            con, nat, man, pak = ({"informative": lab + rng.normal(0, 0.3, 120),
                                   "misleading": -lab + rng.normal(0, 0.3, 120), "unrelated": rng.normal(size=120),
                                   "absent": np.full(120, np.nan)}[k] for k in (contrast, native, map_anm, packing))
            anm = rng.normal(size=120)
            out.append({"protein": f"p{p}", "map_kind": kind, "residue_r": r, "anm_r": 0.0, "atom_r": 0.5,
                        "sd_spearman": 0.0, "z_abs": [0.5, 1.5], "_res": (pr, anm, lab, con, nat, man, pak)})
        return out
    helps = summarize(rows("informative"))
    assert helps["contrast_weight"] >= 0.5 and helps["residue_r_with_contrast"] > helps["contrast_c0_residue_r"]
    assert helps["native_contrast_weight"] <= 0.1  # the native contrast is noise here
    assert helps["anm_weight"] == 0.0  # ANM here is noise
    native = summarize(rows("unrelated", "informative"))
    assert native["contrast_weight"] <= 0.1 and native["native_contrast_weight"] >= 0.5
    assert native["residue_r_with_contrast"] > native["native_n0_residue_r"]
    assert summarize(rows("unrelated"))["contrast_weight"] <= 0.1  # a contrast unrelated to the labels
    absent = summarize(rows("absent", "absent"))
    assert absent["contrast_weight"] == 0.0 and absent["native_contrast_weight"] == 0.0
    assert "contrast_c0_residue_r" not in absent and absent["map_anm_weight"] == 0.0
    # map-only rows: the weight of the map's own elastic network, fitted the same way
    voxel = summarize(rows("absent", "absent", "informative"))
    assert voxel["map_anm_weight"] >= 0.5 and voxel["residue_r_with_map_anm"] > voxel["map_anm_e0_residue_r"]
    assert summarize(rows("absent", "absent", "unrelated"))["map_anm_weight"] <= 0.1
    # the map's packing (voxel mode's default), fitted before the elastic network's weight
    pk = summarize(rows("absent", "absent", "unrelated", "informative"))
    assert pk["map_packing_weight"] >= 0.5 and pk["residue_r_with_packing"] > pk["map_packing_k0_residue_r"]
    assert pk["map_anm_weight"] <= 0.1 and pk["map_kinds_fitted_on"] == ["map"]


def test_cv_fits_voxel_modes_weights_over_the_kinds_of_test_map():
    """summarize: voxel mode's weights maximize the mean over the kinds of test map (a term that helps frame-averaged
    maps as much as it misleads clean ones gets no weight), while the headline metrics and sd_scale stay on the
    frame-averaged maps."""
    from defmap_train.calibration import summarize
    rng = np.random.default_rng(1)

    def rows(packing, kind, r):
        out = []
        for p in range(6):
            lab = np.convolve(rng.normal(size=120), np.ones(5) / 5, "same")
            pak = (lab if packing == "informative" else -lab) + rng.normal(0, 0.3, 120)
            out.append({"protein": f"p{p}", "map_kind": kind, "residue_r": r, "anm_r": 0.0, "atom_r": 0.5,
                        "sd_spearman": 0.0, "z_abs": [r, 2 * r],
                        "_res": (lab + rng.normal(0, 0.5, 120), rng.normal(size=120), lab, np.full(120, np.nan),
                                 np.full(120, np.nan), np.full(120, np.nan), pak)})
        return out
    frames = rows("informative", "map", 0.5)
    alone = summarize(frames)
    assert alone["map_packing_weight"] >= 0.5
    both = summarize(frames + rows("misleading", "clean", 0.9))
    assert both["map_packing_weight"] <= 0.15 and both["map_kinds_fitted_on"] == ["clean", "map"]
    assert both["residue_r"] == 0.5 and both["sd_scale"] == alone["sd_scale"]  # frame-averaged maps only
