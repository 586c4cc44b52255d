"""Linear-algebra kernels shared by the heads: pure functions, arguments never mutated.

Square-root inverse factors
---------------------------
The kernel head keeps ``M`` (NxN) with ``M.T @ M == inv(A)`` for its regularised kernel matrix
``A = K + lam*I``. Any square factor works, which makes both updates O(N^2) and exact:

* :func:`factor_append` adds a row and column to ``A`` (block inverse / Schur complement);
* :func:`factor_delete` removes row and column ``i`` (a Householder reflection folds the
  removed direction into one row, which is then dropped).

:func:`chol_inv` builds the first factor (the inverse of the Cholesky factor) by recursive
blocking, so the cost is dominated by matrix products, which BLAS runs much faster than
LAPACK's unblocked-ish ``potrf``/``trtri`` on small ARM and x86 cores.
"""

from __future__ import annotations

import numpy as np

__all__ = ["chol_inv", "factor_append", "factor_delete"]


def chol_inv(A: np.ndarray, block: int = 96) -> np.ndarray:
    """Lower-triangular ``L_inv`` (NxN) with ``L_inv @ A @ L_inv.T == I`` for SPD ``A`` (NxN).

    Keeps the dtype of ``A`` (float32 is about twice as fast). Raises
    :class:`numpy.linalg.LinAlgError` if ``A`` is not positive definite.
    """
    out = np.zeros_like(A)
    _chol_inv_into(A, out, block)
    return out


def _chol_inv_into(A: np.ndarray, out: np.ndarray, block: int) -> None:
    n = A.shape[0]
    if n <= block:
        out[...] = np.linalg.inv(np.linalg.cholesky(A))
        return
    h = n // 2
    _chol_inv_into(A[:h, :h], out[:h, :h], block)
    li11 = out[:h, :h]
    l21 = A[h:, :h] @ li11.T
    schur = A[h:, h:] - l21 @ l21.T
    _chol_inv_into(schur, out[h:, h:], block)
    np.matmul(out[h:, h:], l21 @ li11, out=out[h:, :h])
    out[h:, :h] *= -1


def factor_append(M: np.ndarray, k: np.ndarray, a: float) -> np.ndarray:
    """Grow a factor of ``inv(A)`` by one sample.

    ``M`` (NxN, float32 or float64) satisfies ``M.T @ M == inv(A)``; ``k`` (N) is the new
    column of ``A`` against the old samples and ``a`` its diagonal entry. Returns ``M2``
    ((N+1)x(N+1), dtype of M) with ``M2.T @ M2 == inv([[A, k], [k.T, a]])``. Raises
    LinAlgError if the grown matrix is not positive definite (numerically).
    """
    n = M.shape[0]
    mk = (M @ k.astype(M.dtype)).astype(np.float64)
    s = float(a - mk @ mk)
    if not s > 0.0:
        raise np.linalg.LinAlgError("matrix is not positive definite after the update")
    rs = np.sqrt(s)
    out = np.empty((n + 1, n + 1), dtype=M.dtype)
    out[:n, :n] = M
    out[:n, n] = 0.0
    out[n, :n] = (mk.astype(M.dtype) @ M) / -rs
    out[n, n] = 1.0 / rs
    return out


def factor_delete(M: np.ndarray, i: int) -> np.ndarray:
    """Shrink a factor of ``inv(A)`` by removing sample ``i``.

    ``M`` (NxN, float32 or float64) satisfies ``M.T @ M == inv(A)``. Returns ``M2``
    ((N-1)x(N-1), dtype of M) with
    ``M2.T @ M2 == inv(A')`` where ``A'`` is ``A`` without row and column ``i``; uses
    ``inv(A') = P[-i,-i] - p p.T / P[i,i]`` (P = inv(A)) applied to the factor via a Householder
    reflection, so it stays a square root of a positive definite matrix.
    """
    n = M.shape[0]
    if n == 1:
        return np.zeros((0, 0), dtype=M.dtype)
    m = M[:, i]
    rest = np.delete(M, i, axis=1)
    j = int(np.argmax(np.abs(m)))
    norm = float(np.linalg.norm(m))
    if norm == 0.0:  # cannot happen for a factor of an invertible matrix
        raise np.linalg.LinAlgError("factor column is zero")
    v = m.copy()
    v[j] += np.copysign(norm, m[j])
    vv = float(v @ v)
    reflected = rest - np.outer(v, (2.0 / vv) * (v @ rest)).astype(M.dtype)
    return np.delete(reflected, j, axis=0)

