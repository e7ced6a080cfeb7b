"""Normal modes of the fitted model (anisotropic network model, C-alpha); without a model (voxel mode), normal
modes of pseudo-atoms placed in the map's own density (``map_shape.map_pseudo_atoms``).

Free of ChimeraX imports: training imports the same code (its ANM labels and the ATLAS baseline).  Why a combination:
on the four ATLAS chains with real MD (training/README.md) the map-only 5 Å model and ANM of the structure alone each
correlate with MD at r ≈ 0.74-0.75 per residue, and the plain sum of their z-scores at 0.79 — their errors differ.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, sparse
from scipy.spatial import cKDTree

from .map_shape import map_pseudo_atoms
from .preprocess import available_memory

CUTOFF = 15.0  # Å, C-alpha ANM as in the training labels and the ATLAS baseline
LEAF = 96  # C-alpha atoms per leaf of the nested-dissection tree (48-160 cost about the same on 6EZ8)
DENSE_FALLBACK_NODES = 3000  # degenerate geometry (e.g. collinear atoms): dense eigendecomposition up to this size


def anm_hessian(ca: np.ndarray, cutoff: float = CUTOFF, sparse_matrix: bool = False):
    """(3N, 3N) ANM Hessian, spring constant 1 for every C-alpha pair closer than `cutoff`: a dense array, or with
    ``sparse_matrix=True`` a scipy.sparse CSR matrix (3×3 blocks for the springs and the diagonal only)."""
    ca = np.asarray(ca, dtype=np.float64)
    return _hessian_csr(ca, _pairs(ca, cutoff)) if sparse_matrix else _hessian_dense(ca, _pairs(ca, cutoff))


def _pairs(ca: np.ndarray, cutoff: float) -> np.ndarray:
    return cKDTree(ca).query_pairs(cutoff, output_type="ndarray").reshape(-1, 2)


def _blocks(ca: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    d = ca[pairs[:, 1]] - ca[pairs[:, 0]]
    return -np.einsum("pi,pj->pij", d, d) / np.einsum("pi,pi->p", d, d)[:, None, None]


def _hessian_dense(ca: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    n = len(ca)
    blocks = _blocks(ca, pairs)
    h4 = np.zeros((n, 3, n, 3))
    h4[pairs[:, 0], :, pairs[:, 1], :] = blocks
    h4[pairs[:, 1], :, pairs[:, 0], :] = blocks
    diag = -h4.sum(axis=2)  # (n, 3, 3): each node's block balances its off-diagonal blocks
    h4[np.arange(n), :, np.arange(n), :] = diag
    return h4.reshape(3 * n, 3 * n)


def _hessian_csr(ca: np.ndarray, pairs: np.ndarray) -> sparse.csr_matrix:
    n = len(ca)
    b = _blocks(ca, pairs)
    i, j = pairs[:, 0], pairs[:, 1]
    diag = np.zeros((n, 3, 3))
    np.add.at(diag, i, -b)
    np.add.at(diag, j, -b)
    rows, cols = np.concatenate([i, j, np.arange(n)]), np.concatenate([j, i, np.arange(n)])
    order = np.lexsort((cols, rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    h = sparse.bsr_matrix((np.concatenate([b, b, diag])[order], cols[order], indptr), shape=(3 * n, 3 * n))
    return h.tocsr()


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
    parts of fewer than 4 C-alpha atoms get NaN (no internal motion to speak of).  Exact (the dense pseudo-inverse to
    ~1e-13), by a sparse factorization whose cost grows with the separators of the network, not with N³: see
    `_msf_connected`.  Raises MemoryError, naming the memory it would need, when that exceeds what is available.
    """
    ca = np.asarray(ca, dtype=np.float64)
    n = len(ca)
    out = np.full(n, np.nan)
    labels = _components(ca, cutoff)
    parts = [idx for idx in (np.flatnonzero(labels == k) for k in np.unique(labels)) if len(idx) >= 4]
    plans = [_Plan(ca[idx], cutoff) for idx in parts]
    need = max((p.nbytes for p in plans), default=0.0)  # parts run one after another
    avail = available_memory()
    if avail is not None and need > avail:
        big = max(len(p) for p in parts)
        raise MemoryError(f"normal modes of {n:,} C-alpha atoms (largest connected part {big:,}) would need about "
                          f"{need / 2 ** 30:.1f} GiB of memory, but only {avail / 2 ** 30:.1f} GiB is available")
    for idx, plan in zip(parts, plans):
        out[idx] = _msf_connected(ca[idx], plan)
    if not np.isfinite(out).any():
        raise ValueError(f"normal modes need at least 4 C-alpha atoms within {cutoff:g} Å of each other, got {n}")
    return out


def memory_estimate(ca: np.ndarray, cutoff: float = CUTOFF) -> float:
    """Bytes `anm_msf` would need at most (its largest connected part), from the symbolic factorization alone."""
    ca = np.asarray(ca, dtype=np.float64)
    labels = _components(ca, cutoff)
    return max((_Plan(ca[labels == k], cutoff).nbytes for k in np.unique(labels) if (labels == k).sum() >= 4),
               default=0.0)


class _Plan:
    """Symbolic phase for one connected network: geometric nested dissection of the C-alpha atoms into a tree whose
    nodes own pivot atoms (a separator, or a leaf's atoms; no spring joins two child subtrees of one node), each
    node's boundary (ancestor atoms its subtree couples to after elimination), and the memory the numeric phase
    needs (factor + the selected-inverse blocks along one root-to-leaf path + three of the largest front)."""

    def __init__(self, ca: np.ndarray, cutoff: float, leaf: int = LEAF):
        n = len(ca)
        self.pairs = p = _pairs(ca, cutoff)
        adj = sparse.csr_matrix((np.ones(2 * len(p), dtype=bool), (np.r_[p[:, 0], p[:, 1]], np.r_[p[:, 1], p[:, 0]])),
                                shape=(n, n))
        self.piv, self.parent = _dissect(ca, adj, leaf)
        size = len(self.piv)
        self.kids = [[] for _ in range(size)]
        for t in range(1, size):
            self.kids[self.parent[t]].append(t)
        gone = np.zeros(n, dtype=bool)
        self.bound = [np.zeros(0, dtype=np.int64)] * size
        for t in range(size - 1, -1, -1):  # children before parents (tree nodes are in DFS preorder)
            cand = np.unique(np.concatenate([adj[self.piv[t]].indices] + [self.bound[c] for c in self.kids[t]]))
            gone[self.piv[t]] = True
            self.bound[t] = cand[~gone[cand]]
        ni = np.array([3.0 * len(v) for v in self.piv])
        nu = np.array([3.0 * len(v) for v in self.bound])
        f2 = (ni + nu) ** 2
        path = f2.copy()
        for t in range(1, size):
            path[t] += path[self.parent[t]]
        self.nbytes = 8.0 * (2 * float((ni * (ni + nu)).sum()) + float(path.max()) + 3 * float(f2.max())) \
            + 400.0 * len(p) + 2e7  # + the sparse Hessian and the small arrays
        self.flops = float((ni ** 3 + 2 * ni ** 2 * nu + 2 * ni * nu ** 2).sum())


def _dissect(ca: np.ndarray, adj: sparse.csr_matrix, leaf: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Tree nodes in DFS preorder (a parent before its children).  Each split cuts the atoms at the median along the
    principal axis (of three) that gives the smallest separator: the atoms of one half with a spring to the other."""
    piv, parent = [], []
    mark = np.zeros(len(ca), dtype=bool)
    stack = [(np.arange(len(ca)), -1)]
    while stack:
        nodes, par = stack.pop()
        t = len(piv)
        parent.append(par)
        if len(nodes) <= leaf:
            piv.append(nodes)
            continue
        x = ca[nodes] - ca[nodes].mean(axis=0)
        best = None
        for axis in np.linalg.svd(x, full_matrices=False)[2]:
            order = np.argsort(x @ axis, kind="stable")
            halves = (nodes[order[:len(nodes) // 2]], nodes[order[len(nodes) // 2:]])
            for a, b in (halves, halves[::-1]):  # the separator on either side of the cut
                mark[b] = True
                rows = adj[a]
                hit = np.zeros(len(a), dtype=bool)
                hit[np.repeat(np.arange(len(a)), np.diff(rows.indptr))[mark[rows.indices]]] = True
                mark[b] = False
                if best is None or hit.sum() < best[0]:
                    best = (int(hit.sum()), a, b, hit)
        _, a, b, hit = best
        piv.append(a[hit])
        for part in (b, a[~hit]):
            if len(part):
                stack.append((part, t))
    return piv, np.array(parent)


def _ground(ca: np.ndarray, atoms: np.ndarray) -> np.ndarray | None:
    """Six coordinates whose fixing removes rigid-body motion (all of atom a, two of b, one of c; a, b, c among
    `atoms`, far apart and not collinear), as indices into the 3N coordinates; None for degenerate geometry.  Fixing
    them anywhere in the network leaves the rest of the Hessian positive definite, whichever tree node owns them."""
    if len(atoms) < 3:
        return None
    x = ca[atoms] - ca[atoms[0]]
    b = int(np.argmax((x ** 2).sum(1)))
    r = x[b]
    if r @ r < 1e-6:
        return None
    u = r / np.linalg.norm(r)
    perp = x - np.outer(x @ u, u)
    c = int(np.argmax((perp ** 2).sum(1)))
    if perp[c] @ perp[c] < 1e-2:
        return None
    m = int(np.argmax(np.abs(r)))  # b: fix the two coordinates across a-b (rotations about axes through a)
    k = int(np.argmax(np.abs(np.cross(u, x[c]))))  # c: the coordinate that rotation about a-b moves most
    ia, ib, ic = (3 * int(atoms[q]) for q in (0, b, c))
    return np.array([ia, ia + 1, ia + 2] + [ib + q for q in range(3) if q != m] + [ic + k])


def _msf_connected(ca: np.ndarray, plan: _Plan) -> np.ndarray:
    """diag(H⁺) per atom for one connected network, exactly, without a dense (3N)² matrix.

    Ground six coordinates (`_ground`): the rest of the Hessian, A, is positive definite, and its inverse padded
    with zeros, G, is a generalized inverse of H, so H⁺ = Q G Q with Q = I − P Pᵀ (P: rigid-body basis) and
    diag(H⁺) = diag(G) − 2 rowsum(P ∘ GP) + rowsum((P PᵀGP) ∘ P).  A = L Lᵀ by multifrontal Cholesky along the
    nested-dissection tree (dense fronts: a node's pivots and boundary); diag(G) by selected inversion down the tree
    (Takahashi: Z_UI = −Z_UU W, Z_II = (L_II L_IIᵀ)⁻¹ − Wᵀ Z_UI with W = L_UI L_II⁻¹, needing only Z on the
    parent's front); GP by one solve with 6 right-hand sides.  About 12 GFLOP for 6EZ8's 2,621 C-alpha atoms instead
    of ~500 for a dense inverse.  Degenerate geometry falls back to the dense eigendecomposition.
    """
    n = len(ca)
    g = _ground(ca, np.arange(n))  # any three far-apart, non-collinear atoms of the part
    try:
        if g is None:
            raise linalg.LinAlgError("degenerate network geometry")
        return _msf_multifrontal(ca, plan, g)
    except linalg.LinAlgError:
        if n > DENSE_FALLBACK_NODES:
            raise
    w, v = np.linalg.eigh(_hessian_dense(ca, plan.pairs))
    keep = w > 1e-9 * max(w[-1], 1.0)
    keep[:6] = False  # rigid-body modes
    return (v[:, keep] ** 2 / w[keep]).sum(axis=1).reshape(n, 3).sum(axis=1)


def _msf_multifrontal(ca: np.ndarray, plan: _Plan, grounded: np.ndarray) -> np.ndarray:
    """The multifrontal Cholesky, selected inversion and rigid-body projection that `_msf_connected` describes,
    with six coordinates grounded.  One function on purpose (85 lines): the factor pass up the tree and the
    inversion pass down it share each node's front indices and factors, which helpers would pass back and forth."""
    n = len(ca)
    h = _hessian_csr(ca, plan.pairs)
    free = np.ones(3 * n, dtype=bool)
    free[grounded] = False

    def dofs(atoms):
        d = (3 * atoms[:, None] + np.arange(3)).reshape(-1)
        return d[free[d]]

    size = len(plan.piv)
    piv_dofs = [dofs(v) for v in plan.piv]
    bnd_dofs = [dofs(v) for v in plan.bound]
    pos = np.full(3 * n, -1, dtype=np.int64)

    def where(t, dof):  # positions of `dof` in node t's front [pivots, boundary]
        front = np.concatenate([piv_dofs[t], bnd_dofs[t]])
        pos[front] = np.arange(len(front))
        q = pos[dof]
        pos[front] = -1
        return q

    upd, lii, wt = [None] * size, [None] * size, [None] * size
    for t in range(size - 1, -1, -1):  # factor, children first
        i_, u_ = piv_dofs[t], bnd_dofs[t]
        ni, front = len(i_), np.concatenate([i_, u_])
        f = np.zeros((len(front), len(front)))
        hi = h[i_][:, front].toarray()
        f[:ni, :] = hi
        f[ni:, :ni] = hi[:, ni:].T
        for c in plan.kids[t]:
            q = where(t, bnd_dofs[c])
            f[np.ix_(q, q)] += upd[c]
            upd[c] = None
        lii[t] = linalg.cholesky(f[:ni, :ni], lower=True, check_finite=False)
        if len(u_):
            x = linalg.solve_triangular(lii[t], f[:ni, ni:], lower=True, check_finite=False)  # L_II⁻¹ A_IU = L_UIᵀ
            upd[t] = f[ni:, ni:] - x.T @ x
            wt[t] = linalg.solve_triangular(lii[t], x, lower=True, trans="T", check_finite=False)  # Wᵀ
    gdiag = np.zeros(3 * n)
    z = [None] * size
    pending = [len(k) for k in plan.kids]
    for t in range(size):  # selected inversion, parents first
        i_, u_ = piv_dofs[t], bnd_dofs[t]
        zuu = None
        if len(u_):
            par = plan.parent[t]
            q = where(par, u_)
            zuu = z[par][np.ix_(q, q)]
            pending[par] -= 1
            if pending[par] == 0:
                z[par] = None
        if not plan.kids[t]:  # a leaf: only its diagonal is needed
            linv, _ = linalg.lapack.dtrtri(lii[t], lower=1)
            d = (linv ** 2).sum(axis=0)
            if zuu is not None:
                d += ((wt[t] @ zuu) * wt[t]).sum(axis=1)
            gdiag[i_] = d
            continue
        zii, _ = linalg.lapack.dpotri(lii[t], lower=1)
        zii = np.tril(zii) + np.tril(zii, -1).T
        if zuu is not None:
            zui = -(zuu @ wt[t].T)
            zii -= wt[t] @ zui
            z[t] = np.block([[zii, zui.T], [zui, zuu]])
        else:
            z[t] = zii
        gdiag[i_] = np.diag(zii)
    p = rigid_body_basis(ca)
    y = p.copy()  # G P: forward and back substitution through the tree
    y[~free] = 0.0
    for t in range(size - 1, -1, -1):
        i_, u_ = piv_dofs[t], bnd_dofs[t]
        if len(u_):
            y[u_] -= wt[t].T @ y[i_]
        y[i_] = linalg.solve_triangular(lii[t], y[i_], lower=True, check_finite=False)
    for t in range(size):
        i_, u_ = piv_dofs[t], bnd_dofs[t]
        x = linalg.solve_triangular(lii[t], y[i_], lower=True, trans="T", check_finite=False)
        if len(u_):
            x -= wt[t] @ y[u_]
        y[i_] = x
    y[~free] = 0.0
    d = gdiag - 2.0 * (p * y).sum(axis=1) + ((p @ (p.T @ y)) * p).sum(axis=1)
    return d.reshape(n, 3).sum(axis=1)


def _components(ca: np.ndarray, cutoff: float) -> np.ndarray:
    from scipy.sparse.csgraph import connected_components
    pairs = _pairs(ca, cutoff)
    g = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(ca), len(ca)))
    return connected_components(g, directed=False)[1]


def anm_log_fluctuations(ca: np.ndarray, cutoff: float = CUTOFF) -> np.ndarray:
    """log10 of the ANM root-mean-square fluctuation per C-alpha (relative: spring constant and temperature omitted)."""
    return 0.5 * np.log10(anm_msf(ca, cutoff))


PHASES = tuple((a, b, c) for a in (0.0, 0.5) for b in (0.0, 0.5) for c in (0.0, 0.5))  # of the binning cubes


def map_elastic_network(lattice: np.ndarray, n_voxels: int, voxel_size: float, centers_zyx: np.ndarray,
                        cutoff: float = CUTOFF, phases=PHASES, progress=None) -> np.ndarray:
    """log10 ANM fluctuation of the map's own pseudo-atoms (:func:`map_pseudo_atoms`) at each centre voxel (Gaussian
    weights, sigma 3 Å, of the 4 nearest), averaged over shifted placements of the binning cubes (one placement alone
    is noisy): what normal modes say from the map's shape alone, for voxel mode, which has no model.  All NaN when the
    map gives too few connected pseudo-atoms.  (Blurring the low-passed lattice further before placing them did not
    help on the simulated CV.)  ``progress(fraction)`` is called after each placement."""
    from scipy.spatial import cKDTree
    c = np.asarray(centers_zyx, dtype=np.float64).reshape(-1, 3)[:, ::-1] * float(voxel_size)
    total, count = np.zeros(len(c)), np.zeros(len(c))
    for k, ph in enumerate(phases):
        if progress is not None and k:
            progress(k / len(phases))
        pseudo = map_pseudo_atoms(lattice, n_voxels, voxel_size, ph)
        try:
            fl = anm_log_fluctuations(pseudo, cutoff) if len(pseudo) >= 4 else None
        except (ValueError, MemoryError):
            fl = None
        if fl is None or not np.isfinite(fl).any():
            continue
        ok = np.isfinite(fl)
        d, j = cKDTree(pseudo[ok]).query(c, k=min(4, int(ok.sum())))
        d, j = d.reshape(len(c), -1), j.reshape(len(c), -1)
        w = np.exp(-d ** 2 / (2 * 3.0 ** 2)) + 1e-300
        total += (w * fl[ok][j]).sum(axis=1) / w.sum(axis=1)
        count += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _main(argv: list[str]) -> int:
    """``python -m chimerax.defmap.nma FILE.pdb``: time ANM on its C-alpha atoms (docs/performance.md quotes it)."""
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
