"""A symmetric matrix edited by rank-one terms that are folded in lazily (the ``auto`` head's P).

    P = PendingMatrix(inv(A))          # m x m float64
    u = P.matvec(phi)                  # P @ phi, pending terms included: O(m^2 + m*k)
    P.add(u, -1.0 / c)                 # P += w u u.T in O(m): kept as a factor ...
    A = P.full()                       # ... until the matrix itself is needed (folded, O(m^2 k))

Sherman-Morrison edits of an m x m inverse touch all m^2 entries (8 MB at m = 1,024: a few ms
of memory traffic per sample added or removed). Keeping the last ``k`` edits as vectors makes an
edit O(m*k) and a product O(m^2 + 2*m*k); they are folded in as one blocked matrix product when
``capacity`` of them are pending or when the matrix is read (:meth:`full`). A head that is
recalibrated now and then (which rebuilds P from the points) rarely folds at all.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PendingMatrix"]

#: Rank-one edits kept as vectors before they are folded into the matrix.
CAPACITY = 64


class PendingMatrix:
    """``base + sum_j w_j u_j u_j.T`` (m x m float64) with the sum kept as factors."""

    def __init__(self, base: np.ndarray, shared: bool = False, capacity: int = CAPACITY) -> None:
        self._base = base
        self._shared = shared  # base belongs to someone else: copy it before editing
        self._U = np.empty((capacity, base.shape[0]))  # pending u_j as rows
        self._w = np.empty(capacity)
        self._k = 0

    @property
    def shape(self):
        return self._base.shape

    @property
    def pending(self) -> int:
        return self._k

    @property
    def nbytes(self) -> int:
        return int(self._base.nbytes + self._U.nbytes + self._w.nbytes)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``P @ x`` for x (m) or (m x r), pending edits included."""
        out = self._base @ x
        if self._k:
            U, w = self._U[:self._k], self._w[:self._k]
            coef = U @ x
            out += U.T @ (w * coef if x.ndim == 1 else w[:, None] * coef)
        return out

    def add(self, u: np.ndarray, w: float) -> None:
        """``P += w * u u.T``."""
        if self._k == self._U.shape[0]:
            self._fold()
        self._U[self._k] = u
        self._w[self._k] = w
        self._k += 1

    def share(self) -> None:
        """The array :meth:`full` gave now belongs to someone else too (a save in another
        thread): the next fold works on a copy of it."""
        self._shared = True

    def full(self) -> np.ndarray:
        """P as an array (pending edits folded in; the array is P's own until the next edit)."""
        self._fold()
        return self._base

    def _fold(self, block: int = 128) -> None:
        if not self._k:
            return
        if self._shared:
            self._base, self._shared = self._base.copy(), False
        U, Uw = self._U[:self._k], self._U[:self._k] * self._w[:self._k, None]
        for start in range(0, self._base.shape[0], block):  # no m x m temporary
            self._base[start:start + block] += Uw[:, start:start + block].T @ U
        self._k = 0
