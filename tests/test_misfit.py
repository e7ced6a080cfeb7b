"""Flags where map and model disagree (misfit.py): on EMD-3488 with 5ME2, the hemes left out of the model show up as
unexplained density lined by the heme pockets, and a loop moved out of its density shows up as a stretch outside
the contour; the fitted model as deposited raises neither."""

from __future__ import annotations

import numpy as np
from chimerax.core.commands import run

from .helpers import run_logged, shared_path

PROXIMAL_HIS = {"A": 87, "B": 92, "C": 87, "D": 92}  # the haem iron's ligand in each globin chain


def _open(cx):
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    return cx.models.list(model_id=(2,))[0]


def test_the_deposited_model_raises_no_flag_and_every_residue_gets_a_fit(cx):
    s = _open(cx)
    res, text = run_logged(cx, "defmap #1 structure #2 mapResolution 3.2 color false")
    assert "every stretch lies inside the map's contour and no density" in text
    fits = np.array([r.defmap_fit for r in res.residues])
    assert np.isfinite(fits).all() and fits.min() > 0.5 and np.median(fits) > 2
    assert res.as_dict()["unexplained_density"] == []
    assert s.residues[0].defmap_fit is not None


def test_hemes_left_out_of_the_model_are_unexplained_density_at_their_pockets(cx):
    _open(cx)
    run(cx, "delete #2:HEM", log=False)
    res, text = run_logged(cx, "defmap #1 structure #2 mapResolution 3.2 color false")
    blobs = res.as_dict()["unexplained_density"]
    assert len(blobs) >= 4 and "density the model does not explain" in text
    for b in blobs[:4]:
        assert 100 < b["volume"] < 600
    lined = {spec for b in blobs[:4] for spec in b["residues"]}
    assert {f"/{c}:{n}" for c, n in PROXIMAL_HIS.items()} <= lined, sorted(lined)


def test_a_loop_moved_out_of_its_density_is_named_and_leaves_its_density_unexplained(cx):
    s = _open(cx)
    loop = s.atoms.filter((s.atoms.residues.chain_ids == "A") & (s.atoms.residues.numbers >= 47)
                          & (s.atoms.residues.numbers <= 54))
    centre = s.atoms.coords.mean(axis=0)
    out = loop.coords.mean(axis=0) - centre
    loop.coords = loop.coords + 10.0 * out / np.linalg.norm(out)
    res, text = run_logged(cx, "defmap #1 structure #2 mapResolution 3.2 color false")
    assert "model outside the map's contour" in text and "/A:4" in text.split("outside the map's contour")[1]
    moved = [r.defmap_fit for r in s.residues if r.chain_id == "A" and 47 <= r.number <= 54]
    assert max(moved) < 1.0
    lined = {spec for b in res.as_dict()["unexplained_density"] for spec in b["residues"]}
    assert lined & {f"/A:{n}" for n in range(40, 62)}  # the loop's old place, now empty of model
