"""Unknown-object score shared by every head.

Two cues, each standardised robustly on the held-out (leave-one-out) values of the stored
samples, then added:

* distance: ``1 - max cosine similarity`` to the stored samples (in the head's normalised
  space) -- far from everything seen;
* doubt: ``1 - max calibrated probability`` -- between classes or on no class.

``score = (dist - median_d) / spread_d + (doubt - median_q) / spread_q`` where spread is the
90th percentile minus the median (at least ``SPREAD_FLOOR``). The threshold is the
``quantile`` (default 0.95) of the same score computed for each stored sample with that sample
left out, so about 5 % of frames of known classes are expected to be called unknown. With fewer
than two samples there is no held-out value and the threshold is +inf (never unknown).

Near-identical samples (a capture group, see :mod:`.neighbours`) are left out together and
weigh as one sample in the medians and quantiles (each member ``1 / group size``): otherwise a
data set in which every photo appears twice, or a held button's burst of frames, gives held-out
distances of zero, the spread collapses to its floor and every new frame is "unknown".
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

__all__ = ["SPREAD_FLOOR", "fit_open_set", "open_set_score", "weighted_quantile"]

SPREAD_FLOOR = 1e-2


def weighted_quantile(values: np.ndarray, q: float, weights: Optional[np.ndarray] = None) -> float:
    """The q-quantile of ``values`` (N) with ``weights`` (N, positive; None: equal).

    Linear interpolation between the sorted values placed at their weights' midpoints, scaled
    so that the first sits at 0 and the last at 1: equal weights give ``np.quantile(values, q)``.
    """
    v = np.asarray(values, dtype=np.float64)
    if weights is None or v.size < 2:
        return float(np.quantile(v, q))
    order = np.argsort(v, kind="stable")
    v, w = v[order], np.asarray(weights, dtype=np.float64)[order]
    mid = np.cumsum(w) - w / 2 - w[0] / 2
    return float(np.interp(q, mid / mid[-1], v))


def _robust(values: np.ndarray, weights: Optional[np.ndarray]) -> "tuple[float, float]":
    if values.size == 0:
        return 0.0, float("inf")
    med = weighted_quantile(values, 0.5, weights)
    return med, max(weighted_quantile(values, 0.9, weights) - med, SPREAD_FLOOR)


def open_set_score(dist: np.ndarray, doubt: np.ndarray, params: Dict[str, float]) -> np.ndarray:
    """Unknown score (N) from distances (N) and doubts (N) with fitted ``params``."""
    return ((np.asarray(dist) - params["dist_loc"]) / params["dist_scale"]
            + (np.asarray(doubt) - params["doubt_loc"]) / params["doubt_scale"])


def fit_open_set(loo_dist: np.ndarray, loo_doubt: np.ndarray, doubt_mask: Optional[np.ndarray],
                 quantile: float, weights: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Fit the standardisation and threshold from held-out values of the stored samples.

    ``loo_dist`` (N): distance of each sample to its nearest sample outside its capture group
    (NaN if none); ``loo_doubt`` (N): doubt of its prediction with its group left out;
    ``doubt_mask`` (N bool) marks the samples whose held-out doubt is meaningful (their class
    has a sample outside their group); None means all. ``weights`` (N): ``1 / group size``
    (None: all equal). Returns a dict with ``dist_loc``, ``dist_scale``, ``doubt_loc``,
    ``doubt_scale`` and ``threshold``.
    """
    dist = np.asarray(loo_dist, dtype=np.float64)
    doubt = np.asarray(loo_doubt, dtype=np.float64)
    mask = np.ones(dist.shape, bool) if doubt_mask is None else np.asarray(doubt_mask, bool)
    w = np.ones(dist.shape) if weights is None else np.asarray(weights, dtype=np.float64)
    have = np.isfinite(dist)
    dl, ds = _robust(dist[have], w[have])
    ql, qs = _robust(doubt[have & mask], w[have & mask])
    params = {"dist_loc": dl, "dist_scale": ds, "doubt_loc": ql, "doubt_scale": qs, "threshold": float("inf")}
    ref = have & mask if np.any(have & mask) else have
    if np.any(ref):
        scores = open_set_score(dist[ref], doubt[ref], params)
        params["threshold"] = weighted_quantile(scores, quantile, w[ref])
    return params
