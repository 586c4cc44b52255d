"""Softmax head: L2-regularised multinomial logistic regression fitted with L-BFGS.

Objective over the weights W ((D+1) x C, last row the bias) of the classes that have samples::

    sum_i [logsumexp(u_i W) - (u_i W)_{y_i}] + |W[:D]|^2 / (2 C_reg) + 1e-6 |W[D]|^2 / 2

with ``u_i = [z_i, 1]`` (``C_reg`` as scikit-learn's ``C``; the tiny bias term only makes the
optimum unique). L-BFGS (:mod:`.optim`) needs no learning rate and is deterministic; every
change warm-starts from the current weights.

Held-out scores for calibration: after ``fit`` from ``cv_folds``-fold cross-validation (folds
dealt round-robin within each class, so no randomness; each fold warm-starts from the full fit;
a capture group of near-identical samples stays in one fold); ``add`` records the new sample's
scores under the model *before* it is absorbed (a true held-out prediction; a near-copy of
stored samples takes their group's held-out scores instead) and keeps the others, ``remove``
drops its row. Unlike the least-squares heads an
updated head therefore equals a fresh fit in its weights (to optimiser tolerance) but not in its
held-out scores.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from .base import Head, _positive
from edge_classifier.errors import InvalidParameterError
from .optim import lbfgs

__all__ = ["SoftmaxHead"]


def _objective(w: np.ndarray, U: np.ndarray, Y: np.ndarray, reg: np.ndarray) -> Tuple[float, np.ndarray]:
    """Penalised NLL and gradient for flat weights w ((D+1)*C), U (Nx(D+1), float32 or float64),
    Y one-hot (NxC), reg ((D+1)) per-row penalty weights; sums are accumulated in float64."""
    W = w.reshape(U.shape[1], Y.shape[1])
    L = (U @ W.astype(U.dtype)).astype(np.float64)
    m = L.max(axis=1, keepdims=True)
    E = np.exp(L - m)
    s = E.sum(axis=1, keepdims=True)
    value = float(np.sum(np.log(s) + m) - np.sum(L * Y) + 0.5 * np.sum(reg[:, None] * W * W))
    grad = (U.T @ (E / s - Y).astype(U.dtype)).astype(np.float64) + reg[:, None] * W
    return value, grad.ravel()


class SoftmaxHead(Head):
    """Multinomial logistic regression (L-BFGS, warm-started) with cross-validated calibration."""

    name = "softmax"
    default_temperature = 1.0

    def __init__(self, C: float = 10.0, cv_folds: int = 5, max_iter: int = 500, tol: float = 1e-5,
                 power: float = 0.75, unknown_quantile: float = 0.95) -> None:
        self.C = _positive(C, "C")
        if isinstance(cv_folds, bool) or not isinstance(cv_folds, (int, np.integer)) or cv_folds < 2:
            raise InvalidParameterError(f"cv_folds must be an integer >= 2, got {cv_folds!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
            raise InvalidParameterError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.cv_folds, self.max_iter = int(cv_folds), int(max_iter)
        self.tol = _positive(tol, "tol")
        super().__init__(power=power, unknown_quantile=unknown_quantile)
        self._empty_model()

    def params(self) -> Dict[str, Any]:
        return dict(super().params(), C=self.C, cv_folds=self.cv_folds, max_iter=self.max_iter, tol=self.tol)

    def _empty_model(self) -> None:
        self._W = None
        self._H = np.zeros((0, len(self._classes)))

    # -- fitting ----------------------------------------------------------------------------------
    def _solve(self, idx: np.ndarray, W0: np.ndarray) -> np.ndarray:
        """Weights ((D+1) x C) fitted on stored samples ``idx``, warm-started from W0."""
        C = len(self._classes)
        y = self._y[idx]
        active = np.flatnonzero(np.bincount(y, minlength=C) > 0)
        W = np.zeros_like(W0)
        if active.size < 2:  # a single class: nothing to separate
            return W
        # float32 products above float64_below samples: half the memory traffic per iteration
        dtype = np.float64 if idx.size <= self.float64_below else np.float32
        U = np.hstack([self._Z[idx].astype(dtype), np.ones((idx.size, 1), dtype)])
        Y = (y[:, None] == active[None, :]).astype(np.float64)
        reg = np.full(U.shape[1], 1.0 / self.C)
        reg[-1] = 1e-6
        w, _ = lbfgs(lambda v: _objective(v, U, Y, reg), W0[:, active].ravel(), max_iter=self.max_iter,
                     gtol=self.tol)
        W[:, active] = w.reshape(U.shape[1], active.size)
        return W

    def _logits(self, Zq: np.ndarray, W: np.ndarray) -> np.ndarray:
        return Zq @ W[:-1] + W[-1]

    def _padded(self) -> np.ndarray:
        C, d = len(self._classes), self._Z.shape[1]
        if self._W is None:
            return np.zeros((d + 1, C))
        if self._W.shape[1] < C:
            return np.hstack([self._W, np.zeros((d + 1, C - self._W.shape[1]))])
        return self._W

    def _fit_model(self, G: np.ndarray) -> None:
        n = self.n_samples
        self._W = self._solve(np.arange(n), np.zeros((self._Z.shape[1] + 1, len(self._classes))))
        # cross-validated held-out logits; folds dealt round-robin within each class, a capture
        # group at a time (a group is named after its first member, whose class it takes)
        groups = self._held.groups
        firsts = np.unique(groups)
        fold_of = np.zeros(n, np.int64)
        for c in np.unique(self._y[firsts]):
            members = firsts[self._y[firsts] == c]
            fold_of[members] = np.arange(members.size) % self.cv_folds
        fold = fold_of[groups]
        H = np.zeros((n, len(self._classes)))
        Z = self._Z.astype(np.float64)
        for f in range(min(self.cv_folds, n)):
            out = fold == f
            if not out.any() or out.all():
                continue
            Wf = self._solve(np.flatnonzero(~out), self._W)
            H[out] = self._logits(Z[out], Wf)
        self._H = H

    def _add_model(self, z: np.ndarray, label, sims: np.ndarray) -> None:
        H = self._padded_H()
        near = sims > 1.0 - self.duplicate_distance
        if near.any():  # joins a capture group: it shares the group's held-out logits
            row = H[np.isin(self._held.groups, self._held.groups[near])].mean(axis=0)
        else:
            row = self._logits(z[None, :], self._padded())[0]
        self._H = np.vstack([H, row[None, :]])

    def _padded_H(self) -> np.ndarray:
        C = len(self._classes)
        if self._H.shape[1] < C:
            return np.hstack([self._H, np.zeros((self._H.shape[0], C - self._H.shape[1]))])
        return self._H

    def _remove_model(self, i: int) -> None:
        self._H = np.delete(self._padded_H(), i, axis=0)

    def _update_solution(self) -> None:
        self._W = self._solve(np.arange(self.n_samples), self._padded())
        self._H = self._padded_H()

    def _decision(self, Zq: np.ndarray, S: np.ndarray) -> np.ndarray:
        return self._logits(Zq, self._W)

    def _loo_decision(self) -> np.ndarray:
        return self._H

    # -- persistence --------------------------------------------------------------------------
    def _model_arrays(self) -> Dict[str, np.ndarray]:
        return {"W": self._padded().copy(), "H": self._padded_H().copy()}

    def _load_model(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any], G: np.ndarray) -> None:
        W, H = np.asarray(arrays["W"], np.float64), np.asarray(arrays["H"], np.float64)
        C, d, n = len(self._classes), self._Z.shape[1], self.n_samples
        if W.shape != (d + 1, C) or H.shape != (n, C) or not (np.all(np.isfinite(W)) and np.all(np.isfinite(H))):
            raise ValueError(f"softmax weights {W.shape} / held-out scores {H.shape} do not match "
                             f"{n} samples of dimension {d} and {C} classes")
        self._W, self._H = W, H
