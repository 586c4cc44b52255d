"""Landmark (Nyström) kernel ridge maths for the ``auto`` head: pure functions, no state.

    Linv = landmark_factor(K_LL)                 # Linv @ K_LL @ Linv.T == I (m x m)
    Phi = features(S, sq_rows, sq_land, gamma, Linv)   # N x m whitened kernel features
    gram = Gram(m); gram.add(Phi); P, M = gram.solve(lam)   # inv(Phi.T @ Phi + lam*I)
    P2 = rank_update(P, Phi_rows, sign=+1)       # add (+1) or remove (-1) rows, Woodbury

Model (subset of regressors): ``f(x) = k(L, x) @ alpha`` with m landmarks L. The whitened
features ``phi(x) = Linv @ k(L, x)`` turn it into ridge regression with penalty ``lam*|w|^2``,
which is the RKHS norm of f, so while the landmarks span every stored sample (N <= m: every
sample is a landmark) the solution *is* exact kernel ridge, leave-one-out scores included
(the optimum over a subspace that contains the representer span is the same function).

Adding a landmark appends one row to ``Linv`` (the old features keep their values; the
stored samples that are landmarks get 0 in the new coordinate). Adding or removing a sample
is a rank-one update of ``P`` (O(m^2)); removing r samples at once is one Woodbury update
(O(m^2 r + r^3)).
"""

from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from .linalg import chol_inv, factor_append

__all__ = ["Gram", "connected_labels", "factor_dot", "pick_landmarks",
           "features", "kernel_values", "landmark_factor", "rank_update", "row_chunks"]


def kernel_values(S: np.ndarray, sq_rows: np.ndarray, sq_cols: np.ndarray, gamma: float,
                  out: "np.ndarray | None" = None) -> np.ndarray:
    """RBF values ``exp(-gamma*|a-b|^2)`` (A x B, dtype of S) from inner products S (A x B);
    ``out=S`` computes them in place (the same values)."""
    t = S.dtype.type
    a, b = sq_rows.astype(S.dtype)[:, None], sq_cols.astype(S.dtype)[None, :]
    if S.shape[0] <= 256 and out is None:
        d2 = a + b - t(2) * S
    else:  # by row blocks: the same arithmetic without A x B temporaries besides the result
        d2 = np.empty(S.shape, S.dtype) if out is None else out
        for start in range(0, S.shape[0], 256):
            rows = slice(start, start + 256)
            d2[rows] = a[rows] + b - t(2) * S[rows]
    np.maximum(d2, 0, out=d2)
    d2 *= t(-gamma)
    return np.exp(d2, out=d2)


FLOAT32_ABOVE = 512  # larger factors are computed in float32 (twice as fast), as the kernel head's


def _factor(A: np.ndarray) -> np.ndarray:
    """``chol_inv(A)``: computed and returned in float32 above ``FLOAT32_ABOVE`` rows (float64
    if float32 was not accurate enough), in float64 below."""
    if A.shape[0] > FLOAT32_ABOVE:
        try:
            M = chol_inv(A.astype(np.float32, copy=False))
            if np.all(np.isfinite(M)):
                return M
        except np.linalg.LinAlgError:
            pass
    return chol_inv(A.astype(np.float64, copy=False))


def factor_dot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` as float64 where one of them is a factor (or its transpose) of either
    precision: with a float32 factor the product is taken in float32, the precision it was
    computed in, with no float64 copy of it (NumPy would make one: 8 MB at 1,024 landmarks)."""
    if A.dtype == np.float32 or B.dtype == np.float32:
        return (np.asarray(A, np.float32) @ np.asarray(B, np.float32)).astype(np.float64)
    return A @ B


def landmark_factor(K: np.ndarray, jitter: float = 0.0) -> np.ndarray:
    """Lower-triangular ``Linv`` (m x m; float32 above ``FLOAT32_ABOVE``, see :func:`_factor`)
    with ``Linv @ (K + jitter*I) @ Linv.T == I``."""
    A = np.asarray(K)  # read only: no copy of an m x m matrix
    if A.dtype not in (np.float32, np.float64):
        A = A.astype(np.float64)
    if jitter:
        A = A.copy()
        A[np.diag_indices_from(A)] += jitter
    return _factor(A) if A.size else np.zeros((0, 0))


def features(S: np.ndarray, sq_rows: np.ndarray, sq_land: np.ndarray, gamma: float,
             Linv: np.ndarray) -> np.ndarray:
    """Whitened features (N x m float64) of rows with inner products S (N x m) to the landmarks."""
    K = kernel_values(S.astype(np.float64), sq_rows, sq_land, gamma)
    return K @ Linv.T


class Gram:
    """``Phi.T @ Phi`` summed chunk by chunk, then ``inv(... + lam*I)`` and its factor, each
    array let go as soon as the next is made (at m = 1,024 the sum and the factor are float32,
    4 MB each, and the float64 inverse, 8 MB, is summed from the factor a block at a time: a
    peak of 12 MB, not 32)::

        gram = Gram(m)
        for Phi in chunks: gram.add(Phi)
        P, M = gram.solve(lam)          # M.T @ M == P == inv(sum + lam*I); gram is spent
                                        # (M float32 when computed so: above FLOAT32_ABOVE)
    """

    def __init__(self, m: int) -> None:
        # summed in float32 where it is factored in float32 (the chunks' products are float32
        # there too): 4 MB at m = 1,024 rather than 8, and no float32 copy of it to factor
        dtype = np.float32 if m > FLOAT32_ABOVE else np.float64
        self._A: "np.ndarray | None" = np.zeros((m, m), dtype)

    def add(self, Phi: np.ndarray) -> None:
        self._A += Phi.T @ Phi

    def total(self) -> np.ndarray:
        """The sum so far, as a float64 copy (m x m)."""
        return self._A.astype(np.float64)

    def solve(self, lam: float) -> Tuple[np.ndarray, np.ndarray]:
        A, self._A = self._A, None
        A[np.diag_indices_from(A)] += A.dtype.type(lam)
        if A.dtype == np.float32:  # as _factor: float64 again if float32 was not enough
            try:
                M32 = chol_inv(A)
            except np.linalg.LinAlgError:
                M32 = None
            if M32 is not None and np.all(np.isfinite(M32)):
                del A
                return gram_of_rows(M32), M32
            del M32
            A = A.astype(np.float64)
        M = chol_inv(A)
        del A
        return M.T @ M, M


def gram_of_rows(M: np.ndarray, block: int = 128) -> np.ndarray:
    """``M.T @ M`` in float64 for a float32 M (m x m), block by block (each column block of M
    widened to float64 when it is used): no float64 copy of M (8 MB at m = 1,024) and no m x m
    temporary beside the result; symmetric exactly (the lower blocks mirror the upper ones)."""
    m = M.shape[1]
    P = np.empty((m, m))
    for r in range(0, m, block):
        Mr = M[:, r:r + block].astype(np.float64)
        for c in range(r, m, block):
            Mc = Mr if c == r else M[:, c:c + block].astype(np.float64)
            P[r:r + block, c:c + block] = Mr.T @ Mc
            if c != r:
                P[c:c + block, r:r + block] = P[r:r + block, c:c + block].T
    return P


def rank_update(P: np.ndarray, rows: np.ndarray, sign: float) -> np.ndarray:
    """``inv(inv(P) + sign * rows.T @ rows)`` for rows (r x m): Woodbury, a new array.

    Raises LinAlgError when removing rows leaves the system (numerically) singular.
    """
    U = P @ rows.T  # m x r
    C = np.eye(rows.shape[0]) * sign + rows @ U
    if sign < 0:
        w = np.linalg.eigvalsh(-C) if C.shape[0] > 1 else -C.ravel()
        if not np.min(w) > 1e-9:
            raise np.linalg.LinAlgError("removing these samples leaves a singular system")
    return P - U @ np.linalg.solve(C, U.T)


def row_chunks(n: int, size: int = 256) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def connected_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component labels (n int64, the smallest member) of the graph with edges (a[i], b[i])."""
    labels = np.arange(n, dtype=np.int64)
    if a.size == 0:
        return labels
    while True:
        m = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]  # pointer jumping
        if np.array_equal(new, labels):
            return labels
        labels = new


def split_groups(groups: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Members of the groups of two or more, as (groups x size) index arrays, one per size."""
    sizes = np.bincount(groups, minlength=groups.size)
    if not np.any(sizes > 1):
        return ()
    order = np.argsort(groups, kind="stable")
    out = []
    for s in np.unique(sizes[sizes > 1]):
        members = np.isin(groups[order], np.flatnonzero(sizes == s))
        out.append(order[members].reshape(-1, int(s)))
    return tuple(out)


def pick_landmarks(Z: np.ndarray, cand: np.ndarray, gamma: float, residual: float):
    """(rows of Z, ``Linv``, squared norms) of the landmarks taken from candidate rows
    ``cand`` in order, skipping any whose kernel residual against the earlier ones is below
    ``residual`` (exact or near copies)."""
    # float32 where the factor is computed in float32 anyway (above FLOAT32_ABOVE, as the
    # kernel head's kernel matrix): 4 MB at m = 1,024 for the points and for K, not 8 each
    C = Z[cand].astype(np.float32 if cand.size > FLOAT32_ABOVE else np.float64)
    sq = np.einsum("ij,ij->i", C, C, dtype=np.float64)
    K = C @ C.T
    del C
    K = kernel_values(K, sq, sq, gamma, out=K)  # in place
    keep = np.ones(cand.size, bool)
    keep[np.flatnonzero(np.triu(K > 1.0 - residual / 4, 1).any(axis=0))] = False

    def sub(rows):  # K restricted to rows (no copy when that is all of K)
        return K if rows.size == K.shape[0] else K[np.ix_(rows, rows)]
    try:
        idx = np.flatnonzero(keep)
        Linv = landmark_factor(sub(idx))
        weak = np.diag(Linv) ** -2 < residual  # pivot^2: residual against the earlier ones
        if weak.any():  # drop them: the later pivots only grow without them
            idx = idx[~weak]
            Linv = landmark_factor(sub(idx))
        if not np.all(np.isfinite(Linv)) or np.diag(Linv).max() ** -2 < residual / 100:
            raise np.linalg.LinAlgError("near-singular landmarks")
    except np.linalg.LinAlgError:  # grow one by one, skipping what adds nothing
        idx, Linv = [], np.zeros((0, 0))
        for j in range(cand.size):
            r = Linv @ K[idx, j] if idx else np.zeros(0)
            if 1.0 - r @ r > residual:
                Linv = factor_append(Linv, K[idx, j], 1.0)
                idx.append(j)
        idx = np.array(idx, np.int64)
    return cand[idx], Linv, sq[idx].copy()
