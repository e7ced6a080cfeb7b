"""Training subproject tests: the smoke run end to end, and the pieces whose correctness the shipped numbers rest on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch (make train-env)")

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "structures").is_dir(),
                                  reason="../shared/data/structures is not beside the repository")


def test_fcn_dense_equals_per_patch_and_rotations():
    """The FCN's output voxel o is the patch starting at o; rotated lattices give the rotated patches' values."""
    from chimerax.defmap.preprocess import extract_patches
    from chimerax.defmap.rotations import ROTATIONS
    from defmap_train.dataset import Item
    from defmap_train.model import build
    from defmap_train.train import predict_item
    torch.manual_seed(0)
    m = build("fcn").eval()
    rng = np.random.default_rng(0)
    grid = np.abs(rng.normal(size=(30, 27, 33))).astype(np.float32)
    centers = np.stack([rng.integers(5, s - 5, 40) for s in grid.shape], axis=1)
    it = Item("x", grid, centers, np.zeros(40, np.float32), np.zeros(1, int), np.zeros(1, np.float32),
              np.zeros(1, int), {}, "")
    p = extract_patches(grid, centers, 10)[:, None]
    for r in (0, 7, 19):
        with torch.no_grad():
            ref = m(torch.from_numpy(np.ascontiguousarray(ROTATIONS[r](p)))).numpy().reshape(-1)
        assert np.allclose(predict_item(m, it, rotation=r, tile=8), ref, atol=1e-5)


def test_export_parity_and_metadata(tmp_path):
    from chimerax.defmap.network import read_model_info
    from defmap_train.export import export_onnx
    from defmap_train.model import build
    for arch in ("fcn", "reference"):
        m = build(arch).eval()
        path = tmp_path / f"{arch}.onnx"
        dev = export_onnx(m, path, f"t-{arch}", 6.0)
        assert dev <= 1e-5
        info = read_model_info(path)
        assert info.fully_convolutional == (arch == "fcn")
        assert info.spec.filter_resolution == 6.0 and info.spec.box == 10 and info.spec.voxel_size == 1.5
        import onnx
        assert onnx.load(str(path)).opset_import[0].version >= 17


def test_debye_waller_equals_frame_average():
    """Closed-form Debye–Waller blurring and the explicit ensemble average agree (same physics, two paths)."""
    from defmap_train.maps import CLEAN, Randomization, simulate_map
    rng = np.random.default_rng(1)
    n = 60
    xyz = rng.uniform(0, 20, (n, 3))
    rmsf = np.full(n, 1.2)
    frames = rng.normal(0, 1.2 / np.sqrt(3), (4000, n, 3))
    rec = {"xyz": xyz, "element": np.array(["C"] * n), "atom_name": np.array(["CA"] * n),
           "res_index": np.arange(n), "res_name": np.array(["ALA"] * n), "rmsf": rmsf}
    rnd = Randomization(**{**CLEAN.to_dict(), "voxel_size": (1.0, 1.0), "padding": (8.0, 8.0), "n_frames": 4000})
    a = simulate_map({**rec, "frames": frames}, np.random.default_rng(2), rnd, resolution=5.0)
    b = simulate_map(rec, np.random.default_rng(2), rnd, resolution=5.0)
    assert a.values.shape == b.values.shape
    assert np.corrcoef(a.values.ravel(), b.values.ravel())[0, 1] > 0.995


def test_frame_maps_come_with_the_model_at_the_frames_mean():
    """A map averaged from k frames (k drawn in [min_frames, n_frames]) comes with the model a user would fit into
    it: the mean position of those k frames, not the structure the ensemble was made from."""
    from defmap_train.maps import CLEAN, Randomization, simulate_map
    rng = np.random.default_rng(3)
    n = 40
    xyz = rng.uniform(0, 20, (n, 3))
    frames = rng.normal(0, 1.0, (60, n, 3)) + np.array([2.0, 0.0, 0.0])  # every frame shifted by +2 Å in x
    rec = {"xyz": xyz, "element": np.array(["C"] * n), "atom_name": np.array(["CA"] * n), "frames": frames,
           "res_index": np.arange(n), "res_name": np.array(["ALA"] * n), "rmsf": np.full(n, 1.7)}
    rnd = Randomization(**{**CLEAN.to_dict(), "n_frames": 50, "min_frames": 10})
    counts = set()
    for seed in range(6):
        sim = simulate_map(rec, np.random.default_rng(seed), rnd, resolution=5.0)
        k = sim.params["frames"]
        counts.add(k)
        assert 10 <= k <= 50
        shift = (sim.model_xyz - xyz).mean(axis=0)
        assert abs(shift[0] - 2.0) < 4.0 / np.sqrt(k * n) + 0.05 and np.all(np.abs(shift[1:]) < 0.5)
    assert len(counts) > 1
    plain = simulate_map({k2: v for k2, v in rec.items() if k2 != "frames"}, np.random.default_rng(0), rnd, 5.0)
    assert np.array_equal(plain.model_xyz, xyz)


@needs_shared
def test_anm_record_frames_match_rmsf():
    from defmap_train.ensembles import anm_record
    from defmap_train.structure import load_structure
    st = load_structure(SHARED / "structures" / "5pti.cif")
    rec = anm_record(st, np.random.default_rng(0), mean_ca_rmsf=1.0, n_frames=100)
    assert rec["frames"].shape == (100, len(st.xyz), 3) and rec["frames"].dtype == np.float16
    emp = np.sqrt((rec["frames"].astype(float) ** 2).sum(2).mean(0))
    assert np.corrcoef(emp, rec["rmsf"])[0, 1] > 0.95
    assert abs(rec["rmsf"][st.ca_index()].mean() - 1.0) < 0.35  # side chains add a little on top of the CA scale


@needs_shared
def test_smoke(tmp_path):
    """`defmap-train smoke`: tiny data, a short training run, export, parity, the bundle's predictor, the shipped
    recipe end to end (both kinds' CV, calibration and ONNX files the bundle reads), a few MD steps."""
    from defmap_train.smoke import smoke
    rep = smoke(tmp_path / "smoke")
    assert rep["parity_fcn"] <= 1e-5 and rep["parity_reference"] <= 1e-5
    assert rep["bundle_vs_torch"] <= 1e-5
    assert rep["recipe"]["json"] and all(np.isfinite(rep["recipe"][k]["sd_scale"]) for k in ("map", "map+model"))
    assert all("labels from the ensemble engine" in rep["recipe"][k]["fitted_on"] for k in ("map", "map+model"))
    if isinstance(rep.get("md"), dict):
        assert rep["md"]["frames"] >= 2


@pytest.mark.skipif(not (SHARED / "atlas_train").is_dir(), reason="../shared/data/atlas_train is not beside the "
                    "repository")
def test_a_sample_says_its_labels_come_from_md_and_the_calibration_says_so():
    """An atlas_train chain's sample records ATLAS MD as its label source, an engine record's the engine, and the
    calibration a CV over both names both (what the exported models' ``fitted_on`` carries)."""
    from chimerax.defmap import preprocess as pp
    from defmap_train.atlas_dataset import training_chains
    from defmap_train.atlas_train import chain_record
    from defmap_train.dataset import LABEL_ENGINE, LABEL_MD, make_sample
    from defmap_train.pipeline import cv_fitted_on
    rec = chain_record(training_chains()[0], SHARED / "atlas_train")
    xyz = np.asarray(rec["xyz"], dtype=np.float64)
    lo = xyz.min(0) - 12.0
    shape = tuple(int(n) for n in np.ceil((xyz.max(0) + 12.0 - lo) / 1.5)[::-1])
    values = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    x2i, _ = pp.grid_transforms(lo, (1.5,) * 3)
    md = make_sample(values, x2i, 1.5, rec, 5.0, np.random.default_rng(0), resolutions=(5.0,))
    engine = make_sample(values, x2i, 1.5, {k: v for k, v in rec.items() if k != "label_rmsf"}, 5.0,
                         np.random.default_rng(0), resolutions=(5.0,))
    assert md["label_source"] == LABEL_MD and engine["label_source"] == LABEL_ENGINE
    both = cv_fitted_on([{"label_source": md["label_source"]}, {"label_source": engine["label_source"]}])
    assert "ATLAS MD" in both and "the ensemble engine" in both and "md_reference" in both


@needs_shared
def test_gromacs_xvg_and_residue_table(tmp_path):
    """DEFMap's list format (rmsf.xvg numbered as in gromacs.pdb) and per-residue tables give per-atom labels."""
    import gemmi

    from defmap_train.ensembles import record_from_residue_table, record_from_xvg
    pdb = SHARED / "md_reference" / "1ab1_A.pdb"
    serials = [a.serial for r in gemmi.read_structure(str(pdb))[0][0] for a in r]
    xvg = tmp_path / "rmsf.xvg"
    rows = "".join(f"{s} {0.05 + 0.001 * i:.4f}\n" for i, s in enumerate(serials))
    xvg.write_text("# gmx rmsf\n@ title \"RMSF\"\n" + rows)
    rec = record_from_xvg(pdb, xvg, pdb)
    assert np.isfinite(rec["rmsf"]).all() and 0.4 < rec["rmsf"].min() < rec["rmsf"].max() < 10.0  # nm -> Å
    tab = record_from_residue_table(pdb, pdb.with_suffix(".rmsf_nm.txt"))
    assert len(np.unique(tab["res_index"])) == 46 and tab["rmsf"].mean() > 0.3
