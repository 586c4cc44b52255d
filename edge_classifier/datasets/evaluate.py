"""The few-shot evaluation protocol behind ``edge-classifier eval``.

For seed s in 0..N-1: a stratified 70/30 split of the data set (or all of it for training and a
separate validation set for testing), then k shots per class drawn with seed s from the
training part; each head is fitted on the shots' embedding views (augmented views included)
and tested on the test part's plain frames. Results are means over the seeds: closed-set
accuracy (the most likely class), accuracy *as deployed* (an ``unknown`` answer counts as
wrong) and the rate of test images of known classes called unknown::

    results = few_shot_eval(views, y, names, heads=["auto", "knn"], shots=[1, 5, "all"])

A class with fewer than two images, or fewer training images than some k, is reported with a
:class:`~edge_classifier.errors.DatasetWarning` (the CLI prints each as one line).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from edge_classifier.errors import DatasetWarning
from edge_classifier.learning.heads import make_head
from edge_classifier.learning.heads.metrics import (accuracy, classification_report, confusion_matrix, draw_shots,
                            expected_calibration_error, stratified_split)

Shots = Union[int, str]
TEST_FRACTION = 0.3


def parse_shots(text: Union[str, Sequence[Shots]]) -> List[Shots]:
    """``"1,5,10,all"`` -> ``[1, 5, 10, "all"]``; an already parsed list is checked and copied.

    Raises ``ValueError`` naming the first bad entry.
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: List[Shots] = []
    for part in parts:
        part = str(part).strip().lower()
        if part == "all":
            out.append("all")
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise ValueError(f"shots must be positive integers or 'all', not {part!r}")
    if not out:
        raise ValueError("no shots given")
    return out


def shot_warnings(y: np.ndarray, class_names: Sequence[str], shots: Sequence[Shots],
                  split: bool = True) -> List[str]:
    """One line per class too small for the protocol: fewer than two images, or fewer
    training images than a k in ``shots`` (that class is then trained on all it has)::

        shot_warnings(np.array([0, 0, 1]), ["cat", "dog"], [1, 5])
        # ["class 'cat' has 1 training image per split, fewer than k=5: it is trained ...",
        #  "class 'dog' has only 1 image, so it is never tested ..."]

    ``split``: the training part is the 70% of a stratified split (else all of ``y``).
    """
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=len(class_names))
    if split and y.size:
        train, _ = stratified_split(y, TEST_FRACTION, np.random.default_rng(0))
        train_counts = np.bincount(y[train], minlength=len(class_names))
    else:
        train_counts = counts
    ks = [int(k) for k in shots if k != "all"]
    lines = []
    for c, name in enumerate(class_names):
        n, n_train = int(counts[c]), int(train_counts[c])
        if n == 0:
            lines.append(f"class {name!r} has no readable images; it is never predicted")
        elif n < 2 and split:
            lines.append(f"class {name!r} has only 1 image, so it is never tested; give it at "
                         "least 2")
        elif n < 2:
            lines.append(f"class {name!r} has only 1 training image; its scores rest on it alone")
        else:
            bigger = [k for k in ks if k > n_train]
            if bigger:
                where = " per split" if split else ""
                lines.append(f"class {name!r} has {n_train} training image"
                             f"{'s' if n_train != 1 else ''}{where}, fewer than k="
                             f"{','.join(map(str, bigger))}: it is trained on those {n_train}")
    return lines


@dataclass
class EvalResult:
    head: str
    shots: Shots
    accuracy: float
    ece: float
    fit_ms: float
    per_class: Dict[str, Dict[str, float]]
    confusion: List[List[int]] = field(default_factory=list)
    deployed: float = 0.0  # accuracy with "unknown" counted as wrong
    unknown_rate: float = 0.0  # share of (known-class) test images called unknown

    def as_dict(self, confusion: bool = False) -> dict:
        d = {"head": self.head, "shots": self.shots, "accuracy": round(self.accuracy, 4),
             "accuracy_deployed": round(self.deployed, 4),
             "unknown_rate": round(self.unknown_rate, 4),
             "ece": round(self.ece, 4), "fit_ms": round(self.fit_ms, 2),
             "per_class": self.per_class}
        if confusion:
            d["confusion"] = self.confusion
        return d


def _splits(y: np.ndarray, seeds: int, val_y: Optional[np.ndarray]):
    for s in range(seeds):
        if val_y is None:
            train, test = stratified_split(y, TEST_FRACTION, np.random.default_rng(s))
        else:
            train, test = np.arange(len(y)), None
        yield s, train, test


def few_shot_eval(views: np.ndarray, y: np.ndarray, class_names: Sequence[str],
                  heads: Sequence[str], shots: Sequence[Shots], seeds: int = 5,
                  val: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                  progress: bool = False) -> List[EvalResult]:
    """Evaluate ``heads`` at every number of ``shots`` (NxVxD ``views``, N labels ``y``).

    A class too small for the protocol (see :func:`shot_warnings`) raises a
    :class:`DatasetWarning` per class before anything is fitted.
    """
    for line in shot_warnings(y, class_names, shots, split=val is None):
        warnings.warn(line, DatasetWarning, stacklevel=2)
    n_classes = len(class_names)
    acc: Dict[Tuple[str, Shots], List[float]] = {}
    ece: Dict[Tuple[str, Shots], List[float]] = {}
    fit: Dict[Tuple[str, Shots], List[float]] = {}
    deployed: Dict[Tuple[str, Shots], List[float]] = {}
    unknown: Dict[Tuple[str, Shots], List[float]] = {}
    cms: Dict[Tuple[str, Shots], np.ndarray] = {}
    total = seeds * len(shots) * len(heads)
    bar = None
    if progress:
        bar = tqdm(total=total, desc="evaluating", unit="fit", disable=None, leave=False)
    for s, train, test in _splits(y, seeds, None if val is None else val[1]):
        if test is None:
            X_test, y_test = val[0][:, 0], val[1]
        else:
            X_test, y_test = views[test, 0], y[test]
        for k in shots:
            pick = train[draw_shots(y[train], None if k == "all" else int(k),
                                    np.random.default_rng(s))]
            X_fit, y_fit = views[pick, 0], y[pick]
            extra = views[pick, 1:] if views.shape[1] > 1 else None
            for name in heads:
                head = make_head(name)
                t0 = time.perf_counter()
                head.fit(X_fit, y_fit, list(class_names), views=extra)
                fit_ms = (time.perf_counter() - t0) * 1000
                labels, proba, _ = head.predict_detailed(X_test)
                pred = proba.argmax(axis=1)
                if labels.ndim > 1:  # multi-label heads: no class on is unknown
                    labels = np.where(labels.any(axis=1), pred, -1)
                key = (name, k)
                deployed.setdefault(key, []).append(float(np.mean(labels == y_test)))
                unknown.setdefault(key, []).append(float(np.mean(labels < 0)))
                acc.setdefault(key, []).append(accuracy(pred, y_test))
                ece.setdefault(key, []).append(expected_calibration_error(proba, y_test))
                fit.setdefault(key, []).append(fit_ms)
                cm = confusion_matrix(y_test, pred, n_classes)
                cms[key] = cms.get(key, 0) + cm
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    results = []
    for name in heads:
        for k in shots:
            key = (name, k)
            cm = cms[key]
            true = np.repeat(np.arange(n_classes), cm.sum(axis=1))
            pred = np.concatenate([np.repeat(np.arange(n_classes), row) for row in cm])
            report = classification_report(true, pred, n_classes)
            per_class = {c: {"precision": round(float(report.precision[i]), 4),
                             "recall": round(float(report.recall[i]), 4),
                             "f1": round(float(report.f1[i]), 4),
                             "support": int(report.support[i])}
                         for i, c in enumerate(class_names)}
            results.append(EvalResult(name, k, float(np.mean(acc[key])), float(np.mean(ece[key])),
                                      float(np.median(fit[key])), per_class, cm.tolist(),
                                      float(np.mean(deployed[key])),
                                      float(np.mean(unknown[key]))))
    return results


def format_table(results: Sequence[EvalResult], shots: Sequence[Shots]) -> str:
    """Accuracy (ECE) of each head at each number of shots, then accuracy as deployed
    (unknown counted as wrong) and the share called unknown, and fit times, as a text table."""
    heads = list(dict.fromkeys(r.head for r in results))
    by = {(r.head, r.shots): r for r in results}
    width = 15
    lines = ["head".ljust(14) + "".join(f"k={k}".rjust(width) for k in shots),
             " " * 14 + "".join("acc (ECE)".rjust(width) for _ in shots)]
    for h in heads:
        cells = [f"{by[h, k].accuracy:.3f} ({by[h, k].ece:.3f})".rjust(width) for k in shots]
        lines.append(h.ljust(14) + "".join(cells))
    lines.append("as deployed".ljust(14) + "".join("acc (unknown)".rjust(width) for _ in shots))
    for h in heads:
        cells = [f"{by[h, k].deployed:.3f} ({by[h, k].unknown_rate:.3f})".rjust(width)
                 for k in shots]
        lines.append(("  " + h).ljust(14) + "".join(cells))
    lines.append("fit ms".ljust(14))
    for h in heads:
        lines.append(("  " + h).ljust(14) + "".join(f"{by[h, k].fit_ms:.1f}".rjust(width)
                                                    for k in shots))
    return "\n".join(lines)


def format_report(result: EvalResult, class_names: Sequence[str]) -> str:
    """Per-class precision/recall/F1 and the confusion matrix (summed over seeds)."""
    w = max(8, max(len(c) for c in class_names) + 1)
    lines = [f"{result.head}, k={result.shots}: per-class scores",
             "class".ljust(w) + "precision".rjust(10) + "recall".rjust(8) + "f1".rjust(8)
             + "support".rjust(9)]
    for c in class_names:
        p = result.per_class[c]
        lines.append(c.ljust(w) + f"{p['precision']:10.3f}{p['recall']:8.3f}{p['f1']:8.3f}"
                     f"{p['support']:9d}")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    short = [c[:6] for c in class_names]
    lines.append(" " * w + "".join(s.rjust(7) for s in short))
    for c, row in zip(class_names, result.confusion):
        lines.append(c.ljust(w) + "".join(str(v).rjust(7) for v in row))
    return "\n".join(lines)
