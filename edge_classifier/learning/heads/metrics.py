"""Evaluation helpers: splits, shot sampling, accuracy, calibration, AUROC, per-class scores.

Pure functions on NumPy arrays; randomness only through a :class:`numpy.random.Generator`.
The benchmark protocol used for the heads (and by ``edge-classifier evaluate``) is::

    for s in range(5):
        train, test = stratified_split(y, 0.3, np.random.default_rng(s))
        shots = train[draw_shots(y[train], k, np.random.default_rng(s))]   # k=None: all
        head.fit(X[shots], y[shots], classes)
        accuracy(head.predict_proba(X[test]).argmax(1), y[test])

and results are averaged over the seeds.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

from edge_classifier.errors import InvalidLabelError, InvalidParameterError

__all__ = [
    "ClassReport",
    "accuracy",
    "auroc",
    "classification_report",
    "confusion_matrix",
    "draw_shots",
    "expected_calibration_error",
    "stratified_split",
]


def _labels(y, name: str = "y") -> np.ndarray:
    """Return ``y`` as a 1-D int64 array of non-negative labels or raise InvalidLabelError."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise InvalidLabelError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or np.any(arr != np.round(arr)):
            raise InvalidLabelError(f"{name} must hold integer labels")
    arr = arr.astype(np.int64)
    return arr


def stratified_split(y, test_fraction: float, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Split indices of ``y`` (N labels) into (train, test), class by class.

    For every class, in increasing label order, its indices are shuffled with ``rng`` and the
    first ``round(test_fraction * n_c)`` go to the test part (at least one sample stays on each
    side when the class has two or more). Returns two sorted int64 index arrays.
    """
    y = _labels(y)
    if not 0.0 < float(test_fraction) < 1.0:
        raise InvalidParameterError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(float(test_fraction) * idx.size))
        if idx.size >= 2:
            n_test = min(max(n_test, 1), idx.size - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    if not train:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def draw_shots(y, k: Optional[int], rng: np.random.Generator) -> np.ndarray:
    """Pick up to ``k`` positions of every class of ``y`` (N labels) without replacement.

    ``k=None`` keeps every position. A class with fewer than ``k`` samples gives all it has.
    Classes are visited in increasing label order; returns sorted int64 positions into ``y``.
    """
    y = _labels(y)
    if k is None:
        return np.arange(y.size, dtype=np.int64)
    if int(k) != k or k < 1:
        raise InvalidParameterError(f"k must be a positive integer or None, got {k!r}")
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        out.append(rng.choice(idx, size=min(int(k), idx.size), replace=False))
    if not out:
        return np.zeros(0, np.int64)
    return np.sort(np.concatenate(out)).astype(np.int64)


def accuracy(y_pred, y_true) -> float:
    """Fraction of equal labels (N and N); an unknown prediction (-1) counts as wrong."""
    y_pred, y_true = _labels(y_pred, "y_pred"), _labels(y_true, "y_true")
    if y_pred.shape != y_true.shape:
        raise InvalidLabelError(f"y_pred has shape {y_pred.shape} but y_true has {y_true.shape}")
    if y_true.size == 0:
        raise InvalidLabelError("accuracy of an empty set is undefined")
    return float(np.mean(y_pred == y_true))


def expected_calibration_error(proba, y, bins: int = 15) -> float:
    """Expected calibration error of NxC probabilities against N true labels.

    The maximum probability of each row is its confidence; rows are binned in ``bins``
    equal-width bins on [0, 1] (bin b holds confidences in ``(b/bins, (b+1)/bins]``, the first
    bin also holds 0); ECE = sum over bins of (bin size / N) * |accuracy - mean confidence|.
    """
    p = np.asarray(proba, dtype=np.float64)
    y = _labels(y)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise InvalidLabelError(f"proba must be NxC with N={y.size}, got shape {p.shape}")
    if y.size == 0:
        raise InvalidLabelError("calibration error of an empty set is undefined")
    if int(bins) != bins or bins < 1:
        raise InvalidParameterError(f"bins must be a positive integer, got {bins!r}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    b = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    acc_sum = np.bincount(b, weights=correct, minlength=bins)
    conf_sum = np.bincount(b, weights=conf, minlength=bins)
    return float(np.sum(np.abs(acc_sum - conf_sum)) / y.size)


def auroc(scores_pos, scores_neg) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2.

    ``scores_pos`` (P) are e.g. unknown scores of images of an unseen class, ``scores_neg`` (M)
    those of known classes. Computed exactly with mid-ranks (Mann-Whitney U).
    """
    pos = np.asarray(scores_pos, dtype=np.float64).ravel()
    neg = np.asarray(scores_neg, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise InvalidLabelError("AUROC needs at least one positive and one negative score")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise InvalidParameterError("AUROC scores must be finite")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    sorted_v = allv[order]
    ranks = np.empty(allv.size, dtype=np.float64)
    # mid-ranks for ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    mid = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(mid, counts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def confusion_matrix(y_true, y_pred, n_classes: int, unknown: bool = False) -> np.ndarray:
    """C x C counts (row = true class, column = predicted class) as int64.

    With ``unknown=True`` a last column counts predictions of -1 ("unknown"), giving C x (C+1);
    otherwise a prediction of -1 raises :class:`InvalidLabelError`.
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise InvalidLabelError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    c = int(n_classes)
    if c < 1:
        raise InvalidParameterError(f"n_classes must be >= 1, got {n_classes}")
    lo = -1 if unknown else 0
    for name, arr, low in (("y_true", y_true, 0), ("y_pred", y_pred, lo)):
        if arr.size and (arr.min() < low or arr.max() >= c):
            raise InvalidLabelError(f"{name} holds labels outside {low}..{c - 1}")
    cols = c + 1 if unknown else c
    pred = np.where(y_pred < 0, c, y_pred)
    return np.bincount(y_true * cols + pred, minlength=c * cols).reshape(c, cols).astype(np.int64)


class ClassReport(NamedTuple):
    """Per-class scores, each an array of length C (``support`` = true samples per class)."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def classification_report(y_true, y_pred, n_classes: int) -> ClassReport:
    """Per-class precision, recall and F1 (0 where undefined). A prediction of -1 (unknown)
    counts against the recall of the true class and against no class's precision."""
    cm = confusion_matrix(y_true, y_pred, n_classes, unknown=True).astype(np.float64)
    tp = np.diag(cm[:, :-1])
    predicted = cm[:, :-1].sum(axis=0)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return ClassReport(precision, recall, f1, support.astype(np.int64))
