"""What the head makes of its own samples: a confusion matrix from leave-one-out predictions.

Every head keeps its samples and can predict each one as if it had never seen it
(``loo_proba()``), which is an honest estimate of how it will do on new frames, computed
without a test set::

    report = insight(head.classes, head.labels, head.loo_proba())
    report["accuracy"], report["matrix"][i][j]   # samples of class i predicted as class j
    report["confused"][0]                        # {"class": "cat", "as": "dog", "count": 3}
    report["few"]                                # classes with fewer than FEW samples

Pure NumPy, no I/O: the device loop calls it (it owns the head) and the web page draws it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

FEW = 5  # fewer samples than this: the class's numbers say little, and it needs more
TOP_CONFUSED = 5


def insight(classes: Sequence[str], labels: np.ndarray, loo_proba: np.ndarray,
            few: int = FEW) -> Dict[str, Any]:
    """The report described in the module docstring.

    ``classes`` (C names), ``labels`` (N ints in 0..C-1), ``loo_proba`` (NxC held-out
    probabilities). A class without samples has a row of zeros and accuracy None.
    """
    names = list(classes)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    P = np.asarray(loo_proba, dtype=np.float64).reshape(len(y), len(names))
    C = len(names)
    predicted = P.argmax(axis=1) if len(y) else np.zeros(0, np.int64)
    matrix = np.zeros((C, C), dtype=np.int64)
    np.add.at(matrix, (y, predicted), 1)
    counts = matrix.sum(axis=1)
    per_class: List[Dict[str, Any]] = []
    for i, name in enumerate(names):
        mine = y == i
        per_class.append({
            "class": name, "samples": int(counts[i]),
            "accuracy": round(float(matrix[i, i] / counts[i]), 4) if counts[i] else None,
            "confidence": round(float(P[mine, i].mean()), 4) if counts[i] else None})
    confused = [{"class": names[i], "as": names[j], "count": int(matrix[i, j]),
                 "share": round(float(matrix[i, j] / counts[i]), 4)}
                for i in range(C) for j in range(C) if i != j and matrix[i, j] > 0]
    confused.sort(key=lambda c: (-c["count"], -c["share"], c["class"], c["as"]))
    return {"classes": names, "samples": int(len(y)), "matrix": matrix.tolist(),
            "accuracy": round(float(np.trace(matrix) / len(y)), 4) if len(y) else None,
            "per_class": per_class, "confused": confused[:TOP_CONFUSED],
            "few": [n for n, c in zip(names, counts) if c < few], "few_below": few}
