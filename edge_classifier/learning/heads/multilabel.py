"""Multi-label head: one-vs-rest kernel ridge with per-class sigmoids and thresholds.

For scenes where several labels hold at once (a bottle *and* a can). Labels of a sample are a
set of class indices (or a 0/1 row of length C). The model is the kernel ridge of
:class:`.KernelHead` with multi-hot targets; each class then gets

* a Platt sigmoid ``P(class c | x) = sigmoid(a_c * F_c(x) + b_c)`` fitted on the
  leave-one-out scores of the stored samples with a weak prior (a, b) = (10, -5), i.e. 0.5 at a
  score of 0.5 (:func:`.calibration.fit_platt`), and
* a threshold on that probability maximising the leave-one-out F1 of the class
  (:func:`.calibration.best_f1_threshold`; 0.5 while the class has no sample).

``predict`` returns an NxC boolean matrix; a row whose unknown score exceeds the threshold is
all False (nothing known in view). A class with no positive sample gets probability 0.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .calibration import best_f1_threshold, fit_platt, sigmoid
from edge_classifier.errors import InvalidLabelError
from .kernel import KernelHead
from .openset import fit_open_set
from .preprocess import check_class_names

__all__ = ["MultiLabelHead"]


class MultiLabelHead(KernelHead):
    """One-vs-rest kernel ridge with Platt-calibrated sigmoids and per-class thresholds.

    ``fit(X, Y, class_names)`` takes Y as an NxC 0/1 matrix or N label lists; ``add(x, labels)``
    and ``remove_sample(x, labels)`` take a list of class indices (or a boolean row of length C);
    an empty list is a negative sample (none of the classes). Other methods as
    :class:`KernelHead`.
    """

    name = "multilabel"

    def _check_labels(self, y, n: int, n_classes: int) -> np.ndarray:
        if isinstance(y, np.ndarray) and y.ndim == 2:
            rows = y
        else:
            seq = list(y) if not isinstance(y, np.ndarray) else list(y)
            if len(seq) != n:
                raise InvalidLabelError(f"expected {n} label sets, got {len(seq)}")
            rows = []
            for item in seq:
                arr = np.asarray(item)
                if arr.ndim == 1 and arr.size == n_classes and arr.dtype == bool:
                    rows.append(arr.astype(np.uint8))
                    continue
                if arr.ndim > 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                    raise InvalidLabelError(f"a label set must be a list of class indices, got {item!r}")
                idx = arr.astype(np.int64).ravel()
                if idx.size and (idx.min() < 0 or idx.max() >= n_classes):
                    raise InvalidLabelError(f"labels must lie in 0..{n_classes - 1}, got {idx.tolist()}")
                row = np.zeros(n_classes, np.uint8)
                row[idx] = 1
                rows.append(row)
            rows = np.array(rows, dtype=np.uint8).reshape(n, n_classes)
        rows = np.asarray(rows)
        if rows.shape != (n, n_classes):
            raise InvalidLabelError(f"label matrix must be {n}x{n_classes}, got shape {rows.shape}")
        if not np.all((rows == 0) | (rows == 1)):
            raise InvalidLabelError("a label matrix must hold only 0 and 1")
        return rows.astype(np.uint8)

    @staticmethod
    def _infer_class_count(y) -> int:
        ya = np.asarray(y) if isinstance(y, np.ndarray) else None
        if ya is not None and ya.ndim == 2:
            return max(ya.shape[1], 1)
        top = [int(np.max(item)) for item in y if np.size(item)] if y is not None else []
        return max(top, default=0) + 1

    @property
    def class_counts(self) -> np.ndarray:
        C = len(self._classes)
        if self.n_samples == 0:
            return np.zeros(C, np.int64)
        Y = self._y
        if Y.shape[1] < C:
            Y = np.hstack([Y, np.zeros((Y.shape[0], C - Y.shape[1]), np.uint8)])
        return Y.sum(axis=0).astype(np.int64)

    def add_class(self, name: str) -> int:
        check_class_names(self._classes + [name])
        if self.n_samples:
            self._y = np.hstack([self._y, np.zeros((self.n_samples, 1), np.uint8)])
        return super().add_class(name)

    def _targets(self) -> np.ndarray:
        T = self._y.astype(np.float64)
        self._tmean = T.mean(axis=0)
        return T - self._tmean

    def _decision(self, Zq: np.ndarray, S: np.ndarray) -> np.ndarray:
        return super()._decision(Zq, S) + self._tmean  # scores near 0/1, as Platt's prior expects

    def _loo_decision(self) -> np.ndarray:
        return super()._loo_decision() + self._tmean

    def _refresh(self) -> None:
        C = len(self._classes)
        self._platt = np.tile([1.0, -10.0], (C, 1))
        self._thresholds = np.full(C, 0.5)
        if self.n_samples == 0:
            self._open = fit_open_set(np.zeros(0), np.zeros(0), None, self.unknown_quantile)
            self._empty_model()
            return
        self._update_solution()
        F = self._loo_decision()
        counts = self.class_counts
        Y = self._y.astype(bool)
        outside = self._positives_outside_group()
        P = np.zeros_like(F)
        for c in range(C):
            if counts[c] == 0:
                continue
            # a positive whose class has no positive outside its capture group has no
            # meaningful held-out score: it calibrates nothing
            use = ~Y[:, c] | outside[:, c]
            a, b = fit_platt(F[use, c], Y[use, c])
            self._platt[c] = a, b
            P[:, c] = sigmoid(a * F[:, c] + b)
            self._thresholds[c] = best_f1_threshold(P[use, c], Y[use, c])
        self._open = fit_open_set(self._held_out_distance(), 1.0 - P.max(axis=1),
                                  np.all(outside | ~Y, axis=1), self.unknown_quantile,
                                  1.0 / self._held.sizes)

    def _positives_outside_group(self) -> np.ndarray:
        """NxC bools: class c has a positive sample outside sample i's capture group."""
        inside = np.zeros((self.n_samples, len(self._classes)))
        np.add.at(inside, self._held.groups, self._y)
        return self.class_counts[None, :] > inside[self._held.groups]

    def _proba(self, F: np.ndarray) -> np.ndarray:
        P = sigmoid(F * self._platt[:, 0] + self._platt[:, 1])
        P[:, self.class_counts == 0] = 0.0
        return P

    @property
    def thresholds(self) -> np.ndarray:
        """Per-class probability thresholds (C)."""
        return self._thresholds.copy()

    @property
    def temperature(self) -> float:
        return 1.0

    def predict(self, X) -> Tuple[np.ndarray, np.ndarray]:
        """(NxC booleans: label present, NxC probabilities); unknown rows are all False."""
        present, P, _ = self.predict_detailed(X)
        return present, P

    def predict_detailed(self, X) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(NxC booleans, NxC probabilities, N unknown scores) from one pass over the samples."""
        Zq, S = self._query(X)
        P = self._proba(self._decision(Zq, S))
        score = self._unknown(S, P)
        present = P >= self._thresholds[None, :]
        present[score > self._open["threshold"]] = False
        return present, P, score
