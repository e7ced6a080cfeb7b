"""Normal modes at scale (src/nma.py): the sparse multifrontal pseudo-inverse against the dense one and ProDy's ANM,
disconnected copies, and the memory refusal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from chimerax.defmap import nma

from .helpers import shared_path
from .test_normal_modes import chain_walk


def read_ca(path) -> np.ndarray:
    return np.array([(float(ln[30:38]), float(ln[38:46]), float(ln[46:54])) for ln in open(path)
                     if ln.startswith("ATOM") and ln[12:16] == " CA " and ln[16] in " A"])


def dense_msf(ca: np.ndarray) -> np.ndarray:
    """The previous (dense) method, kept here as the reference: H⁺ = (H + s P Pᵀ)⁻¹ − P Pᵀ / s by one Cholesky
    inverse of the (3N)² matrix (one connected network)."""
    h = nma.anm_hessian(ca)
    p = nma.rigid_body_basis(ca)
    s = float(np.abs(np.diag(h)).max())
    inv = linalg.cho_solve(linalg.cho_factor(h + s * (p @ p.T)), np.eye(len(h)))
    return (np.diag(inv) - (p ** 2).sum(axis=1) / s).reshape(-1, 3).sum(axis=1)


def test_sparse_hessian_equals_dense():
    ca = chain_walk(120, 4)
    hs = nma.anm_hessian(ca, sparse_matrix=True)
    assert hs.nnz < hs.shape[0] ** 2 / 2
    assert np.allclose(hs.toarray(), nma.anm_hessian(ca), rtol=0, atol=1e-12)  # diagonal: another summation order


def test_multilevel_dissection_equals_dense():
    """600 atoms: a tree of several levels (leaves of nma.LEAF atoms), exact to rounding."""
    ca = chain_walk(600, 5)
    assert len(nma._Plan(ca, nma.CUTOFF).piv) > 3
    got, want = nma.anm_msf(ca), dense_msf(ca)
    assert np.allclose(got, want, rtol=1e-8), np.abs(got / want - 1).max()


def test_6ez8_equals_the_dense_result():
    """6EZ8's 2,621 C-alpha atoms, one connected network: residue fluctuations r >= 0.99 with the dense method
    (the issue's bar); in fact equal to ~1e-13."""
    ca = read_ca(shared_path("structures", "6ez8.pdb"))
    assert len(ca) == 2621
    got, want = nma.anm_log_fluctuations(ca), 0.5 * np.log10(dense_msf(ca))
    assert np.corrcoef(got, want)[0, 1] >= 0.99
    assert np.abs(got - want).max() < 1e-8


def test_two_copies_of_6ez8_are_not_refused():
    """Refused before (over 4,000 C-alpha atoms): two copies 300 Å apart are two networks, each as if alone."""
    ca = read_ca(shared_path("structures", "6ez8.pdb"))
    both = nma.anm_msf(np.vstack([ca, ca + 300.0]))
    alone = nma.anm_msf(ca)
    assert np.allclose(both[:len(ca)], alone, rtol=1e-9) and np.allclose(both[len(ca):], alone, rtol=1e-9)


def test_matches_prody_anm():
    """ProDy's ANM (dense Hessian, all non-zero modes) on a mid-size chain, 1EVE (534 C-alpha), same coordinates."""
    prody = pytest.importorskip("prody", reason="ProDy is not installed (pip install -r training/requirements.txt)")
    prody.confProDy(verbosity="none")
    ca = prody.parsePDB(str(shared_path("structures", "1eve.pdb"))).select("name CA and protein").getCoords()
    assert 500 < len(ca) < 600
    anm = prody.ANM("1eve")
    anm.buildHessian(ca, cutoff=nma.CUTOFF, gamma=1.0)
    anm.calcModes(n_modes=None, zeros=False)
    want = prody.calcSqFlucts(anm)
    got = nma.anm_msf(ca)
    assert np.corrcoef(got, want)[0, 1] > 0.9999
    assert np.allclose(got, want, rtol=1e-6), np.abs(got / want - 1).max()


def test_refuses_with_the_memory_it_would_need(monkeypatch):
    ca = chain_walk(300, 6)
    need = nma.memory_estimate(ca)
    assert 1e6 < need < 2e8
    monkeypatch.setattr(nma, "available_memory", lambda: need / 2)
    msg = r"300 C-alpha atoms .* would need about 0\.\d GiB of memory, but only 0\.\d GiB is available"
    with pytest.raises(MemoryError, match=msg):
        nma.anm_msf(ca)
    monkeypatch.setattr(nma, "available_memory", lambda: need * 2)
    assert np.isfinite(nma.anm_msf(ca)).all()


def test_memory_estimate_bounds_the_measured_peak():
    """The estimate is an upper bound of what the factorization allocates (tracemalloc sees numpy's buffers)."""
    import tracemalloc
    ca = chain_walk(900, 7)
    tracemalloc.start()
    nma.anm_msf(ca)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= nma.memory_estimate(ca) <= 6 * peak, (peak, nma.memory_estimate(ca))


def test_defmap_refuses_normal_modes_naming_the_memory_and_changes_nothing(cx, monkeypatch):
    from chimerax.core.commands import run
    from chimerax.core.errors import UserError
    run(cx, f"open {shared_path('emdb', 'emd_3488.mrc')}", log=False)
    run(cx, f"open {shared_path('emdb', '5me2.pdb')}", log=False)
    monkeypatch.setattr(nma, "available_memory", lambda: 1e6)
    with pytest.raises(UserError, match=r"normalModes: .* C-alpha atoms .* would need about \d+\.\d GiB of memory"):
        run(cx, "defmap #1 structure #2 normalModes true")
    s = cx.models.list(model_id=(2,))[0]
    assert all(getattr(r, "defmap", None) is None for r in s.residues)


def test_thin_linker_between_domains_equals_dense():
    """Two compact domains joined by a helical linker: the top separator is a handful of linker atoms; the
    rigid-body grounding is chosen from the whole part, never from that separator alone."""
    a, b = chain_walk(200, 8), chain_walk(200, 9)
    a -= a.mean(0)
    b -= b.mean(0)
    k = np.arange(1, 31)
    helix = np.stack([1.5 * k, 2.3 * np.cos(np.radians(100 * k)), 2.3 * np.sin(np.radians(100 * k))], axis=1)
    link = a[np.argmax(a[:, 0])] + helix
    b += link[-1] + [3.8, 0, 0] - b[np.argmin(b[:, 0])]
    ca = np.vstack([a, link, b])
    assert len(np.unique(nma._components(ca, nma.CUTOFF))) == 1
    plan = nma._Plan(ca, nma.CUTOFF, leaf=64)
    assert len(plan.piv[0]) < 20  # the cut goes through the linker
    got, want = nma._msf_connected(ca, plan), dense_msf(ca)
    assert np.allclose(got, want, rtol=1e-8), np.abs(got / want - 1).max()
