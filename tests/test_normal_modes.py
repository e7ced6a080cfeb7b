"""`defmap ... normalModes true`: ANM of the fitted model combined with the map prediction (src/nma.py)."""

from __future__ import annotations

import numpy as np
import pytest
from chimerax.core.commands import run
from chimerax.core.errors import UserError

from chimerax.defmap import combination, map_shape, nma

from .helpers import add_map, shared_path, simulate_map


def chain_walk(n: int, seed: int) -> np.ndarray:
    """A compact C-alpha trace: 3.8 Å steps, each turned at most ~70° from the last (every bond within the cutoff)."""
    rng = np.random.default_rng(seed)
    x, d = [np.zeros(3)], np.array([1.0, 0, 0])
    for _ in range(n - 1):
        d = d + rng.normal(0, 0.8, 3) - 0.02 * x[-1] / 3.8
        d /= np.linalg.norm(d)
        x.append(x[-1] + 3.8 * d)
    return np.array(x)


def pinv_msf(ca: np.ndarray) -> np.ndarray:
    """Reference: trace of the 3×3 diagonal blocks of the Hessian's Moore–Penrose pseudo-inverse."""
    h = nma.anm_hessian(ca)
    return np.einsum("iaia->i", np.linalg.pinv(h, rcond=1e-9, hermitian=True).reshape(len(ca), 3, len(ca), 3))


def test_anm_fluctuations_equal_the_pseudo_inverse():
    ca = chain_walk(150, 0)
    got, want = nma.anm_msf(ca), pinv_msf(ca)
    assert np.allclose(got, want, rtol=1e-7), np.abs(got / want - 1).max()
    assert np.ptp(np.log10(got)) > 0.3  # not flat: termini and loops move more than the core


def test_disconnected_fragments_are_independent_networks():
    """Two copies 200 Å apart have 12 zero modes; each copy's fluctuations equal those of the copy alone."""
    ca = chain_walk(80, 1)
    both = nma.anm_msf(np.vstack([ca, ca + 200.0]))
    alone = nma.anm_msf(ca)
    assert np.allclose(both[:80], alone, rtol=1e-6) and np.allclose(both[80:], alone, rtol=1e-6)


def test_too_few_c_alpha_atoms_is_a_value_error():
    with pytest.raises(ValueError, match="at least 4"):
        nma.anm_msf(chain_walk(3, 0))


def test_combine_is_the_z_score_sum_on_the_map_scale():
    rng = np.random.default_rng(0)
    m, n = rng.normal(-0.1, 0.2, 50), rng.normal(3.0, 5.0, 50)
    n[[3, 7]] = np.nan  # residues without a C-alpha keep the map value
    c = combination.combine(m, n)
    ok = np.isfinite(n)
    assert c[3] == m[3] and c[7] == m[7]
    assert np.isclose(c[ok].mean(), m[ok].mean()) and np.isclose(c[ok].std(), m[ok].std())
    assert np.corrcoef(c[ok], combination.zscore(m[ok]) + combination.zscore(n[ok]))[0, 1] > 1 - 1e-12


def test_map_elastic_network_from_the_map_alone():
    """Voxel mode's normal modes without a model: about one pseudo-atom per residue's volume, placed in the densest
    voxels; an arm sticking out of a compact body moves more than the body, as ANM of the atoms says."""
    rng = np.random.default_rng(2)
    body = rng.normal(0, 7.0, (300, 3))
    arm = np.stack([np.linspace(12, 45, 60), rng.normal(0, 1.0, 60), rng.normal(0, 1.0, 60)], axis=1)
    xyz = np.vstack([body, arm])
    values, origin = simulate_map(xyz, np.full(len(xyz), 0.5), resolution=5.0, voxel=1.5)
    n_res = 120  # the volume a contour around ~120 residues would enclose
    n_vox = int(n_res * map_shape.RESIDUE_VOLUME / 1.5 ** 3)
    pseudo = map_shape.map_pseudo_atoms(values, n_vox, 1.5)
    assert 0.5 * n_res <= len(pseudo) <= 2 * n_res  # cubes at the surface count when a quarter full
    centers = np.rint((xyz - origin) / 1.5).astype(int)[:, ::-1]  # z, y, x voxels of the points
    fl = nma.map_elastic_network(values, n_vox, 1.5, centers)
    assert np.isfinite(fl).all()
    assert fl[300:][arm[:, 0] > 30].mean() > fl[:300][np.linalg.norm(body, axis=1) < 6].mean() + 0.1
    assert np.allclose(fl, nma.map_elastic_network(values, n_vox, 1.5, centers))  # deterministic
    assert np.isnan(nma.map_elastic_network(values, 2, 1.5, centers)).all()  # too small a volume: no network
    one = nma.map_elastic_network(values, n_vox, 1.5, centers, phases=((0.0, 0.0, 0.0),))
    assert not np.allclose(one, fl)  # the placements are averaged


def test_map_packing_is_the_weighted_contact_number_of_the_contour():
    """Voxel mode's packing: minus the log of the sum of 1/r^2 over contour voxels (the n highest) within the radius,
    checked by brute force; the buried middle of a slab is more packed than its rim, and a voxel with no contour
    voxel in reach gets the floor 1/radius^2 instead of log(0)."""
    rng = np.random.default_rng(3)
    lat = rng.normal(0, 0.1, (14, 16, 18))
    lat[4:10, 3:13, 3:15] += 1.0  # a slab: the contour
    lat[0, 0, 0] = 0.5  # not in the top n
    n = 6 * 10 * 12
    top = map_shape.top_voxels(lat, n)
    assert len(top) == n and lat.ravel()[top].min() >= np.sort(lat.ravel())[-n]
    assert len(map_shape.top_voxels(lat, 0)) == 0 and len(map_shape.top_voxels(lat, 10 ** 6)) == lat.size
    centers = np.array([[7, 8, 9], [4, 3, 3], [7, 8, 3], [0, 0, 0], [13, 15, 17]])
    vs, radius = 1.5, 9.0
    got = map_shape.map_packing(lat, n, vs, centers, radius=radius)
    pts = np.stack(np.unravel_index(top, lat.shape), axis=1) * vs
    for c, g in zip(centers, got):
        r2 = ((pts - c * vs) ** 2).sum(axis=1)
        wcn = (1.0 / r2[(r2 > 0) & (r2 <= radius ** 2)]).sum()
        assert g == pytest.approx(-np.log(max(wcn, 1 / radius ** 2)), rel=1e-4)
    assert got[0] < got[2] < got[1]  # middle, then the middle of a face, then a corner
    far = map_shape.map_packing(lat, n, vs, np.array([[13, 15, 17]]), radius=3.0)
    assert far[0] == pytest.approx(-np.log(1 / 9.0))  # nothing within 3 Å: the floor


@pytest.mark.usefixtures("network_units")
def test_normal_modes_on_emd3488(cx, tmp_path):
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    s = cx.models.list(model_id=(2,))[0]
    plain = run(cx, "defmap #1 structure #2 attribute plain color false")
    res = run(cx, f"defmap #1 structure #2 normalModes true saveCsv {tmp_path / 'r.csv'}")
    by_res = {r: i for i, r in enumerate(res.residues)}
    assert [r.plain for r in res.residues] == pytest.approx([r.defmap_map for r in res.residues], abs=1e-12)
    hem = [r for r in res.residues if r.name == "HEM"]
    assert hem and all(r.defmap_nma is None for r in hem)
    prot = [r for r in res.residues if r.name != "HEM"]
    mp = np.array([r.defmap_map for r in prot])
    nm = np.array([r.defmap_nma for r in prot])
    comb = np.array([r.defmap for r in prot])
    w = float(res.model.calibration.get("anm_weight", 1.0))
    assert np.allclose(comb, combination.combine(mp, nm, w))
    zsum = combination.zscore(mp) + w * combination.zscore(nm)
    assert 0.2 < np.corrcoef(mp, nm)[0, 1] < 0.95 < np.corrcoef(comb, zsum)[0, 1]
    for r in prot[:20]:  # atom values moved with their residue: residue mean of its backbone atoms (residueAtoms
        vals = [a.defmap for a in r.atoms if a.name in ("N", "CA", "C", "O")]  # default) = residue value
        assert np.mean(vals) == pytest.approx(res.residue_values[by_res[r]], abs=1e-9)
    assert res.as_dict()["normal_modes"] and "normal_modes" in res.as_dict()["residues"][0]
    assert plain.nma_residue_values is None and s.num_residues == 570
    import csv
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == len(res.residues)
    first_prot = next(i for i, r in enumerate(res.residues) if r.name != "HEM")
    row = rows[first_prot]
    assert float(row["map_log10_rmsf"]) == pytest.approx(res.residues[first_prot].defmap_map, abs=1e-5)
    assert float(row["prior_log10"]) == pytest.approx(res.residues[first_prot].defmap_nma, abs=1e-5)
    assert float(row["log10_rmsf"]) == pytest.approx(res.residues[first_prot].defmap, abs=1e-5)
    assert any(r["prior_log10"] == "" for r in rows)  # the haems


def test_normal_modes_errors_change_nothing(cx, tmp_path):
    pdb = shared_path("emdb", "5me2.pdb")
    tiny = tmp_path / "tiny.pdb"  # three residues: no normal modes
    tiny.write_text("".join(ln for ln in open(pdb) if ln.startswith("ATOM") and ln[21] == "A"
                            and int(ln[22:26]) <= 3) + "END\n")
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {tiny}", log=False)
    n_models = len(cx.models.list())
    with pytest.raises(UserError, match="uncertainty need a structure"):
        run(cx, "defmap #1 normalModes true uncertainty true")
    with pytest.raises(UserError, match="at least 4 C-alpha"):
        run(cx, "defmap #1 structure #2 normalModes true")
    s = cx.models.list(model_id=(2,))[0]
    assert s.num_residues == 3 and len(cx.models.list()) == n_models
    assert all(getattr(r, "defmap", None) is None for r in s.residues)
    assert all(getattr(a, "defmap", None) is None for a in s.atoms)


def _atlas_rows(cx, chain: str) -> tuple[float, float, float]:
    from chimerax.pdb import open_pdb
    pdb = shared_path("md_reference", f"{chain}.pdb")
    md = np.array([float(x) for x in pdb.with_suffix(".rmsf_nm.txt").read_text().replace("\n", ",").split(",")
                   if x.strip()]) * 10.0
    s = open_pdb(cx, str(pdb))[0][0]
    cx.models.add([s])
    heavy = s.atoms.filter(s.atoms.element_numbers != 1)
    rmsf = md[s.residues.indices(heavy.residues)]
    values, origin = simulate_map(heavy.coords, rmsf, resolution=5.0, noise=0.3, seed=1)
    v = add_map(cx, values, origin)
    res = run(cx, f"defmap #{v.id_string} structure #{s.id_string} normalModes true color false")
    lab = np.log10(md[s.residues.indices(res.residues)])
    ok = np.isfinite(res.nma_residue_values)
    return tuple(float(np.corrcoef(x[ok], lab[ok])[0, 1])
                 for x in (res.map_residue_values, res.nma_residue_values, res.residue_values))


def test_defmap_beats_the_structure_only_baseline_on_atlas_md(cx):
    """Real MD truth (ATLAS, never trained on): lightly noisy maps simulated from the MD RMSF, the shipped 5 Å model.
    Mean per-residue r with MD: the map-only prediction and the combination each beat ANM of the structure alone
    (the baseline the project set).  On these clean maps the map alone does best; on training's randomized maps the
    combination does (training: defmap-train validate-md)."""
    rows = np.array([_atlas_rows(cx, c) for c in ("1ab1_A", "1ail_A", "1b8d_K", "1bgf_A")])
    print("ATLAS residue r (map only, ANM only, combined):", rows.round(3).tolist(), rows.mean(axis=0).round(3))
    map_only, anm_only, combined = rows.mean(axis=0)
    assert map_only > anm_only and combined > anm_only


def test_normal_mode_attributes_survive_session_save(cx, random_model, tmp_path):
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    res = run(cx, f"defmap #1 structure #2 model {random_model} normalModes true")
    before = {(r.chain_id, r.number): (r.defmap, r.defmap_map, r.defmap_nma) for r in res.residues}
    run(cx, f"save {tmp_path / 's.cxs'}")
    run(cx, "close")
    run(cx, f"open {tmp_path / 's.cxs'}")
    s = [m for m in cx.models.list() if m.name == "5me2.pdb"][0]
    after = {(r.chain_id, r.number): (r.defmap, r.defmap_map, r.defmap_nma) for r in s.residues}
    assert all(after[k] == pytest.approx(v, nan_ok=True) if v[2] is not None else after[k][2] is None
               for k, v in before.items())
