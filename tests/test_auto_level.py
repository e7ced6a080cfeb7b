"""Voxel mode without ``level``: the map chooses a contour near the molecule's volume (map_shape.auto_level), the log
says so, ``level`` still overrides it, and a map with nothing to split is refused with one sentence."""

from __future__ import annotations

import numpy as np
import pytest
from chimerax.core.commands import run
from chimerax.core.errors import UserError

from chimerax.defmap import map_shape
from chimerax.defmap import preprocess as pp

from .helpers import add_map, read_heavy_atoms, shared_path, simulate_map


def _protein_map(noise: float = 0.0, seed: int = 0):
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    values, origin = simulate_map(xyz, np.ones(len(xyz)), resolution=4.0, pad=20.0)
    if noise:
        values = values + np.random.default_rng(seed).normal(0, noise * values.std(), values.shape).astype(np.float32)
    n_res = len({ln[22:27] for ln in open(pdb) if ln.startswith("ATOM") and ln[21] == "A"})
    return values, origin, n_res


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_chosen_level_encloses_about_the_molecule(noise):
    values, _, n_res = _protein_map(noise)
    level, n = map_shape.auto_level(values, 1.0, 5.0)
    ratio = n / (n_res * map_shape.RESIDUE_VOLUME)
    initial = (values >= np.quantile(values, 0.99)).sum() / (n_res * map_shape.RESIDUE_VOLUME)
    assert 0.5 < ratio < 1.6 and ratio > 2 * initial, (ratio, initial)
    assert n == (values >= level).sum()


def test_the_lattice_scores_the_volume_the_level_encloses_in_a_finely_sampled_noisy_map():
    """Resampling a 0.75 Å map with voxel-scale noise to the 1.5 Å lattice averages its peaks away, so the level
    that encloses the molecule in the map encloses far less of the lattice; voxel mode scores the same volume."""
    pdb = shared_path("structures", "1a28.pdb")
    xyz = read_heavy_atoms(pdb, chain="A")
    values, origin = simulate_map(xyz, np.ones(len(xyz)), resolution=4.0, voxel=0.75, pad=12.0)
    values = values + np.random.default_rng(1).normal(0, 2 * values.std(), values.shape).astype(np.float32)
    x2i, i2x = pp.grid_transforms(origin, (0.75,) * 3)
    level = float(np.quantile(values, 0.9))
    volume = (values >= level).sum() * 0.75 ** 3
    spec = pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=5.0)
    scored = len(pp.prepare_voxels(values, x2i, i2x, spec, level).centers) * 1.5 ** 3
    raw, inside = pp.resample(values, x2i, *pp.lattice_for_points(pp._box_corners_xyz(values.shape, i2x), spec,
                                                                  pp.margin_voxels(spec, pp.lowpass_sigma_voxels(
                                                                      spec, None))), 1.5)
    unmoved = ((raw >= level) & inside).sum() * 1.5 ** 3
    assert abs(scored / volume - 1.0) < 0.05, (scored, volume)
    assert unmoved < 0.5 * volume  # the level taken as it is would score under half of it


def test_a_big_lattice_reads_a_sample_for_its_level(monkeypatch):
    """Above LEVEL_SAMPLE voxels the lattice's level comes from a regular sample: the volume it encloses stays
    within a percent of the map's."""
    rng = np.random.default_rng(2)
    values = rng.standard_normal((80, 80, 80)).astype(np.float32)
    raw = (values[::2, ::2, ::2] * 0.5).astype(np.float32)  # flattened peaks, as resampling leaves them
    inside = np.ones(raw.shape, bool)
    exact = pp.carried_level(values, raw, 1.0, inside)
    monkeypatch.setattr(pp, "LEVEL_SAMPLE", 16_000)  # a quarter of the lattice
    sampled = pp.carried_level(values, raw, 1.0, inside)
    want = np.mean(values >= 1.0)
    assert abs(np.mean(raw >= exact) - want) < 2e-3 and abs(np.mean(raw >= sampled) - want) < 0.01
    assert sampled != 1.0


def test_voxel_mode_uses_and_logs_the_chosen_level(cx, random_model):
    values, origin, _ = _protein_map()
    v = add_map(cx, values, origin)
    res = run(cx, f"defmap #{v.id_string} model {random_model} color false")
    assert res.level_chosen and res.level == pytest.approx(map_shape.auto_level(values, 1.0, 5.0)[0])
    given = run(cx, f"defmap #{v.id_string} model {random_model} level {res.level * 2:g} color false")
    assert not given.level_chosen and given.voxels < res.voxels
    assert res.as_dict()["level_chosen"] is True


def test_a_map_with_nothing_to_split_is_refused(cx, random_model):
    v = add_map(cx, np.full((30, 30, 30), 0.5, np.float32), (0, 0, 0))
    before = v.full_matrix().copy()
    with pytest.raises(UserError, match="give 'level'"):
        run(cx, f"defmap #{v.id_string} model {random_model}")
    assert np.array_equal(v.full_matrix(), before)
