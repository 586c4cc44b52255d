"""Baseline heads from Coral's on-device learning demos.

* :class:`ImprintingHead` -- weight imprinting: a class is the L2-normalised mean of its
  normalised samples, the score is the cosine similarity to it.
* :class:`KnnHead` -- the "teachable machine": majority vote of the k nearest stored samples by
  cosine similarity (ties go to the class of the nearest voter).

Both default to ``power=1.0`` (plain L2 normalisation, as in Coral's demos). Both update
exactly in O(D) (imprinting) or O(N*D) (k-NN) per added sample.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .base import Head
from edge_classifier.errors import InvalidParameterError

__all__ = ["ImprintingHead", "KnnHead"]


class ImprintingHead(Head):
    """Cosine similarity to the normalised class means (imprinted weights)."""

    name = "imprinting"
    default_temperature = 0.05

    def __init__(self, power: float = 1.0, unknown_quantile: float = 0.95) -> None:
        super().__init__(power=power, unknown_quantile=unknown_quantile)
        self._sums = np.zeros((0, 0))

    def _empty_model(self) -> None:
        self._sums = np.zeros((len(self._classes), self._Z.shape[1] if self._Z.ndim == 2 else 0))

    def _fit_model(self, G: np.ndarray) -> None:
        C = len(self._classes)
        onehot = (self._y[None, :] == np.arange(C)[:, None]).astype(np.float64)  # C x N
        self._sums = onehot @ self._Z.astype(np.float64)

    def _grow(self) -> None:
        C, d = len(self._classes), self._Z.shape[1]
        if self._sums.shape != (C, d):
            sums = np.zeros((C, d))
            r, c = min(C, self._sums.shape[0]), min(d, self._sums.shape[1])
            sums[:r, :c] = self._sums[:r, :c]
            self._sums = sums

    def _add_model(self, z: np.ndarray, label, sims: np.ndarray) -> None:
        if self._sums.shape[1] != z.size:
            self._sums = np.zeros((len(self._classes), z.size))
        self._grow()
        self._sums[int(label)] += z

    def _remove_model(self, i: int) -> None:
        self._sums[int(self._y[i])] -= self._Z[i].astype(np.float64)

    def _update_solution(self) -> None:
        self._grow()
        norms = np.linalg.norm(self._sums, axis=1)
        self._norms = norms
        self._protos = np.divide(self._sums, norms[:, None], out=np.zeros_like(self._sums),
                                 where=norms[:, None] > 0)

    def _decision(self, Zq: np.ndarray, S: np.ndarray) -> np.ndarray:
        return Zq @ self._protos.T

    def _loo_decision(self) -> np.ndarray:
        Z = self._Z.astype(np.float64)
        F = Z @ self._protos.T
        rows = np.arange(self.n_samples)
        own = self._sums[self._y]  # N x D
        zs = np.einsum("ij,ij->i", Z, own)
        zz = np.einsum("ij,ij->i", Z, Z)
        rest = np.sqrt(np.maximum(self._norms[self._y] ** 2 - 2.0 * zs + zz, 0.0))
        F[rows, self._y] = np.divide(zs - zz, rest, out=np.zeros_like(rest), where=rest > 1e-12)
        grouped = np.flatnonzero(self._held.sizes > 1)
        if grouped.size:  # a capture group leaves every class it has members in
            C = len(self._classes)
            keys, inverse = np.unique(self._held.groups[grouped] * C + self._y[grouped], return_inverse=True)
            group_sums = np.zeros((keys.size, Z.shape[1]))
            np.add.at(group_sums, inverse.ravel(), Z[grouped])
            rest = self._sums[keys % C] - group_sums  # each (group, class) pair left out
            norm = np.linalg.norm(rest, axis=1)
            rest = np.divide(rest, norm[:, None], out=np.zeros_like(rest), where=norm[:, None] > 1e-12)
            # every grouped sample against every (its group, class) pair
            pair_row, pair_key = np.nonzero(self._held.groups[grouped][:, None] == (keys // C)[None, :])
            F[grouped[pair_row], keys[pair_key] % C] = np.einsum(
                "ij,ij->i", Z[grouped[pair_row]], rest[pair_key])
        return F


class KnnHead(Head):
    """k nearest neighbours by cosine similarity, majority vote (Coral's teachable machine).

    Raw score of class c: ``votes_c / k + 0.01 * (best similarity among its voters)``; the
    second term only breaks ties. Probabilities are a tempered softmax of these scores.
    """

    name = "knn"
    default_temperature = 0.2

    def __init__(self, k: int = 3, power: float = 1.0, unknown_quantile: float = 0.95) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidParameterError(f"k must be a positive integer, got {k!r}")
        self.k = int(k)
        self.n_neighbours = self.k
        super().__init__(power=power, unknown_quantile=unknown_quantile)

    def params(self) -> Dict[str, Any]:
        return dict(super().params(), k=self.k)

    def _votes(self, idx: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """Scores (N x C) from neighbour indices and similarities (N x k; index -1 = none)."""
        n, C = idx.shape[0], len(self._classes)
        F = np.zeros((n, C))
        best = np.full((n, C), -np.inf)
        valid = idx >= 0
        lab = np.where(valid, self._y[np.maximum(idx, 0)], 0)
        rows = np.repeat(np.arange(n), idx.shape[1])
        np.add.at(F, (rows, lab.ravel()), valid.ravel().astype(np.float64))
        np.maximum.at(best, (rows, lab.ravel()), np.where(valid, sims, -np.inf).ravel())
        bonus = np.where(np.isfinite(best), 1.0 + best, 0.0)  # 1 + cos in [0, 2]
        return F / self.k + 0.005 * bonus

    def _decision(self, Zq: np.ndarray, S: np.ndarray) -> np.ndarray:
        kk = min(self.k, self.n_samples)
        idx = np.argpartition(-S, kk - 1, axis=1)[:, :kk] if kk < S.shape[1] else np.tile(
            np.arange(S.shape[1]), (S.shape[0], 1))
        return self._votes(idx, np.take_along_axis(S, idx, axis=1))

    def _loo_decision(self) -> np.ndarray:
        return self._votes(self._held.idx, self._held.sim)  # neighbours outside the group
