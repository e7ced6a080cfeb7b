"""The image-formation validation maps (``defmap_train.image_formation``): conformer ensembles with the MD RMSF,
ASPIRE particle images and reconstruction, half-map FSC, the map in the structure's frame, and the cache.  Tiny
settings (32³ box, a few hundred images at a high SNR) so that the whole file runs in well under 30 s."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gemmi", reason="image formation needs gemmi (make train-env)")
if importlib.util.find_spec("aspire") is None:  # not imported here: image_formation imports it without side effects
    pytest.skip("image formation needs ASPIRE (make train-env)", allow_module_level=True)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
MD = SHARED / "md_reference"
needs_md = pytest.mark.skipif(not MD.is_dir(), reason="../shared/data/md_reference is not here")
CHAIN = "1ab1_A"  # the smallest md_reference chain (46 residues)


def _tiny():
    from defmap_train.image_formation import Settings
    return Settings(n_images=(400, 400), n_conformers=8, snr=(0.5, 0.5), n_defocus_groups=4, box=32, cg_maxiter=12)


def _at(values, origin, voxel, xyz):
    """Map values at PDB-frame points (values are [z, y, x])."""
    from scipy.ndimage import map_coordinates
    idx = ((np.asarray(xyz) - origin) / voxel)[:, ::-1].T
    return map_coordinates(values, idx, order=1)


@pytest.fixture(scope="module")
def chain():
    from defmap_train.md_reference import load_chain
    return load_chain(MD, CHAIN)


@pytest.fixture(scope="module")
def formed(chain):
    from defmap_train.image_formation import conformers, form_map
    st, md = chain
    rng = np.random.default_rng(7)
    conf = conformers(st, md, None, 8, rng)
    return form_map(conf, st.element, st.xyz, st.n_res, rng, _tiny())


@needs_md
def test_ensemble_rmsf_equals_md_rmsf_and_motion_is_correlated(chain):
    """The synthetic ensemble's per-residue C-alpha RMSF is the MD RMSF, its mean is the structure, residues move
    rigidly, and neighbouring residues move together."""
    from defmap_train.image_formation import conformers
    st, md = chain
    conf = conformers(st, md, None, 16, np.random.default_rng(3))
    assert conf.shape == (16, len(st.xyz), 3)
    ca = conf[:, st.ca_index()]
    rmsf = np.sqrt(((ca - ca.mean(axis=0)) ** 2).sum(-1).mean(axis=0))
    np.testing.assert_allclose(rmsf, md, rtol=0.02)
    np.testing.assert_allclose(conf.mean(axis=0), st.xyz, atol=1e-6)
    d = conf - st.xyz
    for r in (0, st.n_res // 2):
        sel = st.res_index == r
        assert np.allclose(d[:, sel], d[:, sel][:, :1], atol=1e-9)  # one translation per residue
    dca = (ca - ca.mean(axis=0)) / md[None, :, None]
    neighbour = np.mean([(dca[:, i] * dca[:, i + 1]).sum(-1).mean() for i in range(st.n_res - 1)])
    assert neighbour > 0.5  # unit-RMSF displacements of chain neighbours correlate (independent ones would not)


def test_frames_are_used_as_given():
    """With MD frames the conformers are the frames (structure + displacement), not a synthetic ensemble."""
    from defmap_train.image_formation import conformers
    from defmap_train.structure import Structure
    n_res = 5
    st = Structure("toy", np.arange(30, dtype=float).reshape(10, 3), np.array(["C"] * 10), np.array(["CA", "CB"] * 5),
                   np.repeat(np.arange(n_res), 2), ["ALA"] * n_res, [f"A:{i}" for i in range(n_res)],
                   np.array(["A"] * n_res), np.zeros(10))
    disp = np.random.default_rng(0).normal(size=(6, 10, 3))
    conf = conformers(st, np.ones(n_res), disp, 10, np.random.default_rng(1))
    np.testing.assert_allclose(conf, st.xyz[None] + disp)
    assert conformers(st, np.ones(n_res), disp, 3, np.random.default_rng(1)).shape == (3, 10, 3)


def test_potential_is_zyx_in_the_pdb_frame():
    """One sulphur atom's potential peaks at the voxel of its PDB-frame position, indexed [z, y, x], and integrates
    to the same total wherever it sits (gemmi's blur is taken out without loss)."""
    from defmap_train.image_formation import Potential
    origin = np.array([-10.0, 20.0, 5.0])
    pot = Potential(np.array(["S"]), 32, 1.5, origin)
    for ijk in ((3, 5, 20), (17, 9, 11)):  # x, y, z voxel indices
        v = pot(origin[None] + 1.5 * np.array([ijk], dtype=float))
        assert np.unravel_index(np.argmax(v), v.shape) == ijk[::-1]
    total = [pot(origin[None] + [[x, 24.0, 24.0]]).sum() for x in (20.0, 24.3)]
    assert abs(total[0] / total[1] - 1) < 1e-3


@needs_md
def test_reconstruction_matches_the_mean_conformer_potential(formed, chain):
    """The reconstruction from noisy CTF-filtered images with perturbed parameters correlates with the true mean
    potential after a low-pass (and clearly less with a shifted copy); the half-map FSC resolution is finite and
    coarser than Nyquist (2 voxels)."""
    from scipy.ndimage import gaussian_filter
    m = formed
    vs, res = m["voxel_size"], m["resolution"]
    assert np.isfinite(res) and 2 * vs < res < 20.0
    assert m["values"].dtype == np.float32 and m["values"].shape == (32, 32, 32)
    truth = gaussian_filter(m["truth"].astype(np.float64), res / (2.5 * vs))
    cc = np.corrcoef(m["values"].ravel(), truth.ravel())[0, 1]
    cc_shift = np.corrcoef(m["values"].ravel(), np.roll(truth, 4, axis=0).ravel())[0, 1]
    assert cc > 0.5 and cc_shift < cc - 0.2, (cc, cc_shift)
    fsc = np.asarray(m["params"]["fsc"])
    assert fsc[0] > 0.9 and fsc[-1] < 0.5  # signal at low frequency, noise at Nyquist
    st, _ = chain  # the atoms sit in the map (origin is in the PDB frame, values are [z, y, x]), not its mirror
    at = _at(m["values"], m["origin"], vs, st.xyz)
    c = st.xyz.mean(axis=0)
    swapped = _at(m["values"], m["origin"], vs, c + (st.xyz - c)[:, ::-1])
    assert at.mean() > m["values"].mean() + m["values"].std()
    assert at.mean() > 1.5 * swapped.mean(), (at.mean(), swapped.mean())


@needs_md
def test_map_keys_frame_and_cache(tmp_path, monkeypatch, chain):
    """image_formation_map returns validate-md's map keys with the model in the map, caches the map, and a second
    call reads the cache (form_map is not called again); frames on a chain without frames is None."""
    from defmap_train import image_formation as imf
    m = imf.image_formation_map(CHAIN, "ensemble", 0, cache=tmp_path, settings=_tiny(), md_dir=MD)
    assert set(m) == {"values", "origin", "voxel_size", "resolution", "xyz", "variant", "k", "params"}
    assert (tmp_path / f"{CHAIN}__ensemble0.npz").exists()
    st, _ = chain
    np.testing.assert_allclose(m["xyz"], st.xyz)
    p = json.loads(m["params"])
    assert p["resolution"] == m["resolution"] and p["images"] == 400 and {"snr", "envelope_b", "seconds"} <= set(p)
    at = _at(m["values"], m["origin"], m["voxel_size"], m["xyz"])
    assert at.mean() > m["values"].mean() + m["values"].std()

    def boom(*a, **k):
        raise AssertionError("form_map called although the map is cached")
    monkeypatch.setattr(imf, "form_map", boom)
    again = imf.image_formation_map(CHAIN, "ensemble", 0, cache=tmp_path, settings=_tiny(), md_dir=MD)
    np.testing.assert_array_equal(again["values"], m["values"])
    assert again["params"] == m["params"] and again["resolution"] == m["resolution"]
    assert imf.image_formation_map(CHAIN, "frames", 0, cache=tmp_path, settings=_tiny(), md_dir=MD) is None
