"""The paper's workflows as commands, each checked on numbers in a real headless ChimeraX session."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from chimerax.core.commands import run

from chimerax.defmap import network
from chimerax.defmap import preprocess as pp

from .helpers import (
    add_map,
    fcn_onnx_model,
    linear_onnx_model,
    read_heavy_atoms,
    run_logged,
    shared_path,
    simulate_map,
    smooth_rmsf_field,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)


def write_mrc(values, origin, path):
    from chimerax.map_data import ArrayGridData
    from chimerax.map_data.mrc.writemrc import write_mrc2000_grid_data
    write_mrc2000_grid_data(ArrayGridData(values, origin=tuple(origin), step=(1.0, 1.0, 1.0)), str(path))
    return path


def ligand_xyz(pdb: Path, resname: str, chain: str) -> np.ndarray:
    return np.array([(float(ln[30:38]), float(ln[38:46]), float(ln[46:54])) for ln in open(pdb)
                     if ln.startswith("HETATM") and ln[17:20] == resname and ln[21] == chain])


# 1. apo/holo comparison ------------------------------------------------------------------------------------------

def test_compare_sharper_map_around_ligand_gives_negative_difference(cx, trained_model, tmp_path):
    """Designed pair: the second map is sharper (RMSF 0.5 vs 2.5 Å) within 12 Å of progesterone, the same elsewhere."""
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    lig = ligand_xyz(pdb, "STR", "A")
    near = np.min(np.linalg.norm(xyz[:, None] - lig[None], axis=2), axis=1) < 12.0
    m1, origin = simulate_map(xyz, np.full(len(xyz), 2.5), resolution=4.0)
    m2, _ = simulate_map(xyz, np.where(near, 0.5, 2.5), resolution=4.0)
    add_map(cx, m1, origin, "apo")
    add_map(cx, m2, origin, "holo")
    run(cx, f"open {pdb}", log=False)
    s = cx.models.list(model_id=(3,))[0]
    out = tmp_path / "cmp.csv"
    res = run(cx, f"defmap compare #1,2 structure #3/A model {trained_model} mapResolution 4 saveCsv {out}")
    st = res.stats
    assert [c.method for c in res.chains] == ["number"] and res.chains[0].identity == 1.0
    assert st["n_site"] >= 10
    assert st["site_mean_diff"] < -0.1, st
    assert abs(st["rest_mean_diff"]) < abs(st["site_mean_diff"]) / 3, st
    assert st["second_mean"] < st["first_mean"] and st["welch_p"] < 1e-3
    assert st["welch_t"] < 0
    # every site residue is within 5 Å of STR; attribute is second - first
    lig_atoms = s.atoms.filter(s.atoms.residues.names == "STR")
    for r1, d, site in zip(res.residues1, res.diff, res.site):
        assert r1.defmap_diff == pytest.approx(d)
        dmin = np.min(np.linalg.norm(r1.atoms.scene_coords[:, None] - lig_atoms.scene_coords[None], axis=2))
        assert (dmin <= 5.0) == site, (r1, dmin)
    # numbers in the log agree with an independent Welch test on the stored values
    from scipy import stats
    t = stats.ttest_ind(res.values2[res.site], res.values1[res.site], equal_var=False)
    assert st["welch_p"] == pytest.approx(t.pvalue) and st["first_sd"] == pytest.approx(
        res.values1[res.site].std(ddof=1))
    # diverging palette centred on 0: rigidified site residues are blue, not red
    site_cols = np.array([r.ribbon_color for r, f in zip(res.residues1, res.site) if f], dtype=float)
    assert (site_cols[:, 2] > site_cols[:, 0]).mean() > 0.9
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == st["n_matched"]
    assert float(rows[0]["diff"]) == pytest.approx(res.diff[0], abs=1e-5)
    assert sum(int(r["site"]) for r in rows) == st["n_site"]
    j = json.loads(run(cx, f"defmap compare #1,2 structure #3/A model {trained_model} mapResolution 4 color false "
                           "ligand #3/A:STR", return_json=True).json_value)
    assert j["stats"]["site_mean_diff"] == pytest.approx(st["site_mean_diff"])  # explicit ligand = auto-detected
    assert [x["site"] for x in j["residues"]] == res.site.tolist()
    assert len(j["residues"]) == st["n_matched"]


def test_compare_matches_renumbered_model_by_sequence_alignment(cx, random_model, tmp_path):
    """Second model numbered +100 with residues 740–744 deleted: matched by alignment, not by number."""
    pdb = shared_path("structures", "1a28.pdb")
    lines = [ln for ln in open(pdb) if ln.startswith(("ATOM", "HETATM")) and ln[21] == "A" and ln[17:20] != "HOH"]
    kept = []
    for ln in lines:
        num = int(ln[22:26])
        if ln.startswith("ATOM") and num in range(740, 745):
            continue
        kept.append(ln[:22] + f"{num + 100:4d}" + ln[26:])
    shifted = tmp_path / "shifted.pdb"
    shifted.write_text("".join(kept) + "END\n")
    xyz = read_heavy_atoms(pdb, chain="A")
    m, origin = simulate_map(xyz, smooth_rmsf_field(xyz, seed=3), resolution=4.0)
    add_map(cx, m, origin, "a")
    add_map(cx, m, origin, "b")
    run(cx, f"open {pdb}", log=False)
    run(cx, f"open {shifted}", log=False)
    s3 = cx.models.list(model_id=(3,))[0]
    n_protein = sum(1 for r in s3.residues if r.chain_id == "A" and r.polymer_type != 0)
    res = run(cx, f"defmap compare #1,2 structure #3/A & protein to #4 & protein model {random_model}")
    assert [c.method for c in res.chains] == ["alignment"]
    assert res.stats["n_matched"] == n_protein - 5
    for r1, r2 in zip(res.residues1, res.residues2):
        assert r2.number == r1.number + 100 and r2.name == r1.name
    # same map and coordinates: the predictions agree (only the normalization support differs slightly)
    assert np.abs(res.diff).max() < 0.05
    assert res.chains[0].identity == 1.0


@pytest.mark.usefixtures("network_units")
def test_compare_partner_site_and_difference_profile(cx, random_model, tmp_path):
    """partner #3/B: the site is chain A residues within 4 Å of chain B (the dimer interface), by direct distances."""
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    m1, origin = simulate_map(xyz, smooth_rmsf_field(xyz, seed=7), resolution=4.0)
    m2, _ = simulate_map(xyz, smooth_rmsf_field(xyz, seed=8), resolution=4.0)
    add_map(cx, m1, origin, "first")
    add_map(cx, m2, origin, "second")
    run(cx, f"open {pdb}", log=False)
    s = cx.models.list(model_id=(3,))[0]
    png = tmp_path / "diff.png"
    res = run(cx, f"defmap compare #2,1 structure #3/A partner #3/B distance 4 model {random_model} profile {png}")
    assert res.first_map == "#2" and res.second_map == "#1"  # maps in the order written
    b = s.atoms.filter((s.atoms.chain_ids == "B") & (s.atoms.element_numbers != 1))
    for r, flag in zip(res.residues1, res.site):
        a = r.atoms.filter(r.atoms.element_numbers != 1)
        dmin = np.min(np.linalg.norm(a.scene_coords[:, None] - b.scene_coords[None], axis=2))
        assert (dmin <= 4.0) == flag, (r, dmin)
    assert 5 <= res.stats["n_site"] < len(res.site) / 2
    # a direct run on each map gives the same per-residue difference
    r_first = run(cx, f"defmap #2 structure #3/A model {random_model} color false")
    r_second = run(cx, f"defmap #1 structure #3/A model {random_model} color false")
    direct = {r: v for r, v in zip(r_second.residues, r_second.residue_values)}
    for r, v in zip(r_first.residues, r_first.residue_values):
        direct[r] = direct[r] - v
    assert res.diff == pytest.approx([direct[r] for r in res.residues1], abs=1e-6)
    from PIL import Image
    with Image.open(png) as im:
        assert im.format == "PNG"


def test_sequence_alignment_handles_offsets_and_gaps():
    from chimerax.defmap.compare import align_sequences
    a = "MKTAYIAKQRQISFVKSHFSRQ"
    b = "GSAYIAKQRISFVKSHFSRQLE"  # N-terminal change, one deletion (Q), C-terminal extension
    pairs = align_sequences(a, b)
    same = [(i, j) for i, j in pairs if a[i] == b[j]]
    assert len(same) >= 18
    assert all(j - i in (-1, -2) for i, j in same)


# 2. HDX-MS fragments ---------------------------------------------------------------------------------------------

def test_fragments_report_means_and_pearson_r(cx, random_model, tmp_path):
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    m, origin = simulate_map(xyz, smooth_rmsf_field(xyz, seed=5), resolution=4.0)
    add_map(cx, m, origin)
    run(cx, f"open {pdb}", log=False)
    run(cx, f"defmap #1 structure #2/A model {random_model}")
    s = cx.models.list(model_id=(2,))[0]
    vals = {r.number: r.defmap for r in s.residues if r.chain_id == "A" and r.defmap is not None
            and r.polymer_type != 0}
    frags = [(700, 712), (713, 730), (731, 750), (751, 770), (800, 820), (2000, 2010)]
    means = [np.mean([v for n, v in vals.items() if a <= n <= b]) if any(a <= n <= b for n in vals) else None
             for a, b in frags]
    assert means[-1] is None and all(x is not None for x in means[:-1])
    rng = np.random.default_rng(0)
    exp = [3.0 * x + 0.5 + rng.normal(0, 0.01) if x is not None else 1.0 for x in means]
    f = tmp_path / "hdx.csv"
    f.write_text("chain,start,end,uptake\n" + "".join(f"A,{a},{b},{e}\n" for (a, b), e in zip(frags, exp)))
    out = tmp_path / "hdx_out.csv"
    res = run(cx, f"defmap fragments {f} saveCsv {out}")
    got = [fr.mean for fr in res.fragments]
    assert got[-1] is None
    assert np.allclose(got[:-1], means[:-1])
    assert [fr.scored for fr in res.fragments][:2] == [sum(700 <= n <= 712 for n in vals),
                                                       sum(713 <= n <= 730 for n in vals)]
    r_expected = np.corrcoef(means[:-1], exp[:-1])[0, 1]
    assert res.pearson_r == pytest.approx(r_expected, abs=1e-9) and res.n_compared == 5
    rows = list(csv.DictReader(open(out)))
    assert [float(r["mean_prediction"]) for r in rows[:-1]] == pytest.approx(means[:-1], abs=1e-5)
    assert rows[-1]["mean_prediction"] == ""
    # header-less, tab-separated, without experimental values; default CSV beside the input
    f2 = tmp_path / "frags.tsv"
    f2.write_text("".join(f"A\t{a}\t{b}\n" for a, b in frags[:3]))
    j = json.loads(run(cx, f"defmap fragments {f2}", return_json=True).json_value)
    assert [x["mean_prediction"] for x in j["fragments"]] == pytest.approx(means[:3])
    assert j["pearson_r"] is None
    assert (tmp_path / "frags.defmap.csv").exists()


def test_fragments_bad_file_is_a_user_error(cx, random_model, tmp_path):
    from chimerax.core.errors import UserError
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    m, origin = simulate_map(xyz, np.ones(len(xyz)), resolution=4.0)
    add_map(cx, m, origin)
    run(cx, f"open {pdb}", log=False)
    run(cx, f"defmap #1 structure #2/A model {random_model} color false")
    bad = tmp_path / "bad.csv"
    bad.write_text("A,10,5\n")
    with pytest.raises(UserError, match="before start"):
        run(cx, f"defmap fragments {bad}")


# 3. profiles with uncertainty ------------------------------------------------------------------------------------

def gradient_model(path: Path, axis: int) -> Path:
    """Linear kernel w = coordinate along one patch axis (zyx), bias 0: its average over the 24 rotations is 0."""
    c = np.arange(SPEC.box) - (SPEC.box - 1) / 2
    w = np.zeros((SPEC.box,) * 3)
    w += c.reshape([-1 if k == axis else 1 for k in range(3)]) * 0.01
    return linear_onnx_model(path, w.ravel(), 0.0, SPEC, f"grad{axis}")


@pytest.mark.usefixtures("network_units")
def test_uncertainty_is_sd_over_24_rotations_and_profile_shows_it(cx, tmp_path):
    """For a gradient kernel the 24 rotated predictions of a residue are ±Gx, ±Gy, ±Gz (4 each), so the mean is 0
    and the SD is sqrt((Gx²+Gy²+Gz²)/3), where G* come from plain runs with the kernel along each axis."""
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    m, origin = simulate_map(xyz, smooth_rmsf_field(xyz, seed=2), resolution=4.0)
    add_map(cx, m, origin)
    run(cx, f"open {pdb}", log=False)
    G = []
    for axis in range(3):
        res = run(cx, f"defmap #1 structure #2/A model {gradient_model(tmp_path / f'g{axis}.onnx', axis)} "
                      "color false")
        G.append(res.residue_values.copy())
    G = np.array(G)
    assert np.abs(G).max() > 0.01
    png, csv_path, attr = tmp_path / "profile.png", tmp_path / "res.csv", tmp_path / "sd.defattr"
    res = run(cx, f"defmap #1 structure #2/A model {tmp_path / 'g2.onnx'} uncertainty true profile {png} "
                  f"saveCsv {csv_path}")
    expected_sd = np.sqrt((G ** 2).sum(axis=0) / 3)
    assert np.abs(res.residue_values).max() < 1e-5
    assert res.residue_sd == pytest.approx(expected_sd, rel=1e-4, abs=1e-6)
    stored = np.array([r.defmap_sd for r in res.residues])
    assert stored == pytest.approx(expected_sd, rel=1e-4, abs=1e-6)
    # the plotted band is mean ± this SD, per chain, in residue order
    from chimerax.defmap.profile_plot import profile_data
    data = profile_data(res.residues, res.residue_values, res.residue_sd)
    assert list(data) == ["A"]
    order = np.argsort([r.number for r in res.residues if r.polymer_type != 0])
    prot_sd = np.array([sd for r, sd in zip(res.residues, res.residue_sd) if r.polymer_type != 0])
    assert data["A"]["sd"] == pytest.approx(prot_sd[order].tolist())
    assert res.sd_source == "SD over the 24 rotations of the cube"  # the band's title names it (no variance output)
    from PIL import Image
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 600
    rows = list(csv.DictReader(open(csv_path)))
    assert [float(r["sd"]) for r in rows] == pytest.approx(expected_sd.tolist(), abs=1e-5)
    run(cx, f"save {attr} attrName r:defmap_sd models #2")
    lines = [ln.split("\t") for ln in attr.read_text().splitlines() if ln.startswith("\t")]
    lines = [ln for ln in lines if ln[2] != "None"]  # residues without a value are written as None
    assert len(lines) == len(res.residues)
    assert float(lines[0][2]) == pytest.approx(expected_sd[0], rel=1e-4, abs=1e-6)


# 4. exports ------------------------------------------------------------------------------------------------------

def test_save_structure_puts_prediction_in_bfactor_column(cx, random_model, tmp_path):
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    m, origin = simulate_map(xyz, smooth_rmsf_field(xyz, seed=4), resolution=4.0)
    add_map(cx, m, origin)
    run(cx, f"open {pdb}", log=False)
    s = cx.models.list(model_id=(2,))[0]
    before = s.atoms.bfactors.copy()
    out_pdb, out_cif, out_csv = tmp_path / "o" / "dyn.pdb", tmp_path / "dyn_z.cif", tmp_path / "dyn.csv"
    res = run(cx, f"defmap #1 structure #2/A model {random_model} saveStructure {out_pdb} saveCsv {out_csv}")
    assert np.array_equal(s.atoms.bfactors, before)  # the model's own B-factors are untouched
    by_res = {(r.chain_id, r.number): v for r, v in zip(res.residues, res.residue_values)}
    n = 0
    for ln in open(out_pdb):
        if ln.startswith(("ATOM", "HETATM")):
            key = (ln[21], int(ln[22:26]))
            assert float(ln[60:66]) == pytest.approx(by_res.get(key, 0.0), abs=0.006), ln
            n += key in by_res
    assert n >= len(res.atoms)  # every scored atom (and its residue's other atoms) carries the value
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == len(res.residues)
    assert [float(r["log10_rmsf"]) for r in rows] == pytest.approx(res.residue_values.tolist(), abs=1e-5)
    assert [float(r["rmsf_angstrom"]) for r in rows] == pytest.approx((10 ** res.residue_values).tolist(), rel=1e-3)
    # z-normalized mmCIF: read back with ChimeraX, per-residue B equals defmap_z
    run(cx, f"defmap #1 structure #2/A model {random_model} saveStructure {out_cif} bfactor z color false")
    run(cx, f"open {out_cif}", log=False)
    s2 = [m for m in cx.models.list() if m.name == out_cif.name][0]
    z = {(r.chain_id, r.number): r.defmap_z for r in s.residues if r.defmap_z is not None}
    b = {(r.chain_id, r.number): float(r.atoms.bfactors.mean()) for r in s2.residues}
    zs = np.array(list(z.values()))
    assert abs(zs.mean()) < 1e-6 and zs.std() == pytest.approx(1.0)
    for k, v in z.items():
        assert b[k] == pytest.approx(v, abs=0.006)


def test_the_sd_and_the_weights_name_where_they_were_fitted(cx):
    """The shipped models' SD comes in one pass, from their calibration on ATLAS MD, and everything that shows it
    says so; the log's contrast rows name where their weights were fitted, which for the shipped map + model soup is
    atlas_train's MD labels, not the engine's."""
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    res, log = run_logged(cx, "defmap #1 structure #2 mapResolution 3.2 uncertainty true color false")
    assert res.model.has_variance and res.sd_source.startswith("predicted SD (") and "ATLAS MD" in res.sd_source
    assert res.as_dict()["sd_source"] == res.sd_source
    assert "ATLAS MD" in res.model.calibration["fitted_on"] and res.contrast_weight > 0
    assert f"weight {res.contrast_weight:g} fitted on atlas_train's ATLAS MD" in log
    assert "simulated CV" not in log


# 5. models -------------------------------------------------------------------------------------------------------

def test_models_lists_metadata_and_map_resolution_picks_sharpest_adequate_model(cx, tmp_path, monkeypatch):
    """Constant models (zero kernel, bias = resolution / 10) reveal which model a run used from its values."""
    mdir = tmp_path / "models"
    mdir.mkdir()
    for res_a in (5.0, 6.0, 7.0):
        spec = pp.FeatureSpec(voxel_size=1.5, box=6, filter_resolution=res_a)
        linear_onnx_model(mdir / f"const{res_a:g}.onnx", np.zeros(6 ** 3), res_a / 10, spec, f"const-{res_a:g}A")
    user = linear_onnx_model(tmp_path / "mine.onnx", np.zeros(6 ** 3), 0.93,
                             pp.FeatureSpec(voxel_size=1.5, box=6, filter_resolution=4.0), "my-own")
    monkeypatch.setenv(network.MODEL_DIR_ENV, str(mdir))
    monkeypatch.setattr(network, "PACKAGE_MODEL_DIR", tmp_path / "empty")
    j = json.loads(run(cx, "defmap models mapResolution 5.5", return_json=True).json_value)
    assert [m["name"] for m in j["models"]] == ["const-5A", "const-6A", "const-7A"]
    assert [m["resolution"] for m in j["models"]] == [5.0, 6.0, 7.0]
    assert j["models"][0]["box"] == 6 and j["models"][0]["description"] == "test model"
    assert j["chosen"] == j["chosen_voxel"] == "const-6A"  # map-only models only: structure mode takes them too
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    m, origin = simulate_map(xyz, np.ones(len(xyz)), resolution=4.0)
    add_map(cx, m, origin)
    run(cx, f"open {pdb}", log=False)
    for map_res, expect in ((4.0, 0.5), (5.0, 0.5), (5.5, 0.6), (6.5, 0.7), (9.0, 0.7)):
        res = run(cx, f"defmap #1 structure #2/A mapResolution {map_res:g} color false")
        assert res.residue_values == pytest.approx(expect, abs=1e-6), map_res
    res = run(cx, f"defmap #1 structure #2/A model {user} color false")
    assert res.model.name == "my-own" and res.residue_values == pytest.approx(0.93, abs=1e-6)
    models = run(cx, "defmap models")
    assert len(models) == 3


# 6. batch --------------------------------------------------------------------------------------------------------

def test_batch_cxc_example_runs_with_make_run(tmp_path, cx):
    """examples/batch.cxc over EMD-3488 with two fitted models and a simulated 6 Å map; CSVs match an in-process run.

    Map + model test models (the kind structure mode picks) at 3.2 Å and 6 Å, named to sort before shipped models of
    equal resolution, keep the run fast and independent of which models are shipped.
    """
    shared_path("emdb", "emd_3488.mrc")
    mdir = tmp_path / "models"
    mdir.mkdir()

    def mapmodel(path, res, seed, name):
        return fcn_onnx_model(path, pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=res), seed=seed,
                              name=name, layers=((2, 8, 3), (8, 8, 3), (8, 16, 3), (16, 16, 4), (16, 8, 1), (8, 1, 1)),
                              metadata={"input_channels": ["density", "model_density"]})
    random_model = mapmodel(mdir / "random3.onnx", 3.2, 2, "a-random-3.2A")
    mapmodel(mdir / "random6.onnx", 6.0, 3, "a-random-6A")
    out = ROOT / "batch_output"
    import os
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, DEFMAP_MODEL_PATH=str(mdir))
    proc = subprocess.run(["make", "-s", "run", "SCRIPT=examples/batch.cxc"], cwd=ROOT, capture_output=True,
                          text=True, encoding="utf-8", timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("a-random-3.2A (3.2 Å)") == 2 and proc.stdout.count("a-random-6A (6 Å)") == 1
    try:
        rows = {name: list(csv.DictReader(open(out / name))) for name in
                ("emd3488_5me2.csv", "emd3488_5ni1.csv", "molmap6_5me2.csv")}
        assert len(rows["emd3488_5me2.csv"]) > 500 and len(rows["emd3488_5ni1.csv"]) > 500
        assert len(rows["molmap6_5me2.csv"]) > 500
        run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
        run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
        res = run(cx, f"defmap #1 structure #2 model {random_model} mapResolution 3.2 color false")
        assert [float(r["log10_rmsf"]) for r in rows["emd3488_5me2.csv"]] == pytest.approx(
            res.residue_values.tolist(), abs=1e-4)
        lines = (out / "emd3488_5me2_defmap.pdb").read_text().splitlines()
        assert sum(ln.startswith("ATOM") for ln in lines) > 4000
        assert (out / "emd3488_5me2.defattr").read_text().count("\n\t") == len(res.residues)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_batch_python_script_writes_json_per_map(random_model, tmp_path):
    """examples/batch_defmap.py: several maps, one JSON record each (returnJson), values as in the map's run."""
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    jobs = []
    for k, rm in enumerate((0.5, 2.0)):
        m, origin = simulate_map(xyz, np.full(len(xyz), rm), resolution=4.0)
        jobs += [str(write_mrc(m, origin, tmp_path / f"map{k}.mrc")), str(pdb)]
    out = tmp_path / "results.json"
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "examples" / "batch_defmap.py"),
                           "--out", str(out), "--options", f"model {random_model} mapResolution 4", *jobs],
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [Path(r["map_file"]).name for r in results] == ["map0.mrc", "map1.mrc"]
    for r in results:
        assert r["model"] == "random-5A" and len(r["residues"]) > 200
        vals = np.array([x["value"] for x in r["residues"]])
        assert np.isfinite(vals).all() and vals.std() > 0
    # different maps, different predictions: the records are per map, not copies
    v0 = np.array([x["value"] for x in results[0]["residues"]])
    v1 = np.array([x["value"] for x in results[1]["residues"]])
    assert np.abs(v0 - v1).max() > 1e-3
