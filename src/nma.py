"""Normal modes of the fitted model (anisotropic network model, C-alpha) and their combination with the map prediction.

Free of ChimeraX imports: training imports the same code (its ANM labels and the ATLAS baseline).  Why a combination:
on the four ATLAS chains with real MD (training/README.md) the map-only 5 Å model and ANM of the structure alone each
correlate with MD at r ≈ 0.74-0.75 per residue, and the plain sum of their z-scores at 0.79 — their errors differ.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.spatial import cKDTree

CUTOFF = 15.0  # Å, C-alpha ANM as in the training labels and the ATLAS baseline
MAX_NODES = 4000  # two dense (3N)² float64 matrices: about 2.3 GB and half a minute at this size


def anm_hessian(ca: np.ndarray, cutoff: float = CUTOFF) -> np.ndarray:
    """(3N, 3N) ANM Hessian, spring constant 1 for every C-alpha pair closer than `cutoff`."""
    ca = np.asarray(ca, dtype=np.float64)
    n = len(ca)
    pairs = cKDTree(ca).query_pairs(cutoff, output_type="ndarray")
    d = ca[pairs[:, 1]] - ca[pairs[:, 0]]
    blocks = -np.einsum("pi,pj->pij", d, d) / np.einsum("pi,pi->p", d, d)[:, None, None]
    h4 = np.zeros((n, 3, n, 3))
    h4[pairs[:, 0], :, pairs[:, 1], :] = blocks
    h4[pairs[:, 1], :, pairs[:, 0], :] = blocks
    diag = -h4.sum(axis=2)  # (n, 3, 3): each node's block balances its off-diagonal blocks
    h4[np.arange(n), :, np.arange(n), :] = diag
    return h4.reshape(3 * n, 3 * n)


def rigid_body_basis(ca: np.ndarray) -> np.ndarray:
    """Orthonormal (3N, 6) basis of rigid translations and rotations: the null space of a connected network."""
    x = np.asarray(ca, dtype=np.float64) - np.mean(ca, axis=0)
    n = len(x)
    cols = []
    for k in range(3):
        t = np.zeros((n, 3))
        t[:, k] = 1.0
        cols.append(t.reshape(-1))
        e = np.zeros(3)
        e[k] = 1.0
        cols.append(np.cross(e, x).reshape(-1))
    q, _ = np.linalg.qr(np.stack(cols, axis=1))
    return q


def anm_msf(ca: np.ndarray, cutoff: float = CUTOFF) -> np.ndarray:
    """Mean-square fluctuation of each node (trace of its 3×3 block of the Hessian's pseudo-inverse; relative units).

    Parts of the model farther apart than the cutoff do not interact, so each connected part is its own network;
    parts of fewer than 4 C-alpha atoms get NaN (no internal motion to speak of).
    """
    ca = np.asarray(ca, dtype=np.float64)
    n = len(ca)
    if n > MAX_NODES:
        raise ValueError(f"normal modes are limited to {MAX_NODES:,} C-alpha atoms (dense {3 * n:,}² matrices), "
                         f"got {n:,}")
    out = np.full(n, np.nan)
    labels = _components(ca, cutoff)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        if len(idx) >= 4:
            out[idx] = _msf_connected(ca[idx], cutoff)
    if not np.isfinite(out).any():
        raise ValueError(f"normal modes need at least 4 C-alpha atoms within {cutoff:g} Å of each other, got {n}")
    return out


def _msf_connected(ca: np.ndarray, cutoff: float) -> np.ndarray:
    """H⁺ = (H + s P Pᵀ)⁻¹ − P Pᵀ / s with P the rigid-body basis (the null space of a connected network): one
    Cholesky inverse, about 8 s for 6EZ8's 2,621 C-alpha atoms on two cores, instead of an eigendecomposition
    (minutes).  Degenerate geometry (e.g. collinear atoms) falls back to the eigendecomposition."""
    n = len(ca)
    h = anm_hessian(ca, cutoff)
    p = rigid_body_basis(ca)
    scale = max(float(np.abs(np.diag(h)).max()), 1.0)
    pp = p @ p.T
    pp *= scale
    h += pp  # in place: two (3N)² matrices at most
    del pp
    try:
        c, _ = linalg.cho_factor(h, lower=True, overwrite_a=True, check_finite=False)
        inv, info = linalg.lapack.dpotri(c, lower=1, overwrite_c=1)
        if info == 0:
            return (np.diag(inv) - (p ** 2).sum(axis=1) / scale).reshape(n, 3).sum(axis=1)
    except linalg.LinAlgError:
        pass
    w, v = np.linalg.eigh(anm_hessian(ca, cutoff))
    keep = w > 1e-9 * max(w[-1], 1.0)
    keep[:6] = False  # rigid-body modes
    return (v[:, keep] ** 2 / w[keep]).sum(axis=1).reshape(n, 3).sum(axis=1)


def _components(ca: np.ndarray, cutoff: float) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    pairs = cKDTree(ca).query_pairs(cutoff, output_type="ndarray")
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(ca), len(ca)))
    return connected_components(g, directed=False)[1]


def anm_log_fluctuations(ca: np.ndarray, cutoff: float = CUTOFF) -> np.ndarray:
    """log10 of the ANM root-mean-square fluctuation per C-alpha (relative: spring constant and temperature omitted)."""
    return 0.5 * np.log10(anm_msf(ca, cutoff))


def zscore(v: np.ndarray) -> np.ndarray:
    """Per-structure z-score, DEFMap's "normalize" step (NaN ignored; zeros when values do not vary)."""
    v = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(v)
    sd = np.std(v[ok]) if ok.sum() > 1 else 0.0
    return (v - np.mean(v[ok])) / sd if sd > 0 else np.zeros_like(v)


def combine(map_values: np.ndarray, nma_values: np.ndarray) -> np.ndarray:
    """Sum of the two z-scores (no fitted weight), rescaled to the map prediction's mean and SD so the result reads
    as a (relative) log10 RMSF like the map prediction alone.  Entries without a normal-mode value keep the map value.
    """
    m = np.asarray(map_values, dtype=np.float64)
    both = np.isfinite(m) & np.isfinite(nma_values)
    out = m.copy()
    if both.sum() < 2:
        return out
    s = zscore(m[both]) + zscore(np.asarray(nma_values, dtype=np.float64)[both])
    out[both] = np.mean(m[both]) + np.std(m[both]) * zscore(s)
    return out


def _main(argv: list[str]) -> int:
    """``python -m chimerax.defmap.nma FILE.pdb``: time ANM on the file's C-alpha atoms (the README quotes it)."""
    import time
    ca = np.array([(float(ln[30:38]), float(ln[38:46]), float(ln[46:54])) for ln in open(argv[0])
                   if ln.startswith("ATOM") and ln[12:16] == " CA " and ln[16] in " A"])
    t0 = time.perf_counter()
    f = anm_log_fluctuations(ca)
    print(f"{argv[0]}: ANM of {len(ca):,} C-alpha atoms in {time.perf_counter() - t0:.1f} s; "
          f"{np.isfinite(f).sum():,} with a value")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(_main(sys.argv[1:]))
