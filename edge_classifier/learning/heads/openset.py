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
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

__all__ = ["OPEN_SET_KEYS", "SPREAD_FLOOR", "fit_open_set", "open_set_score"]

SPREAD_FLOOR = 1e-2
OPEN_SET_KEYS = ("dist_loc", "dist_scale", "doubt_loc", "doubt_scale", "threshold")


def _robust(values: np.ndarray) -> "tuple[float, float]":
    if values.size == 0:
        return 0.0, float("inf")
    med = float(np.median(values))
    return med, max(float(np.quantile(values, 0.9)) - med, SPREAD_FLOOR)


def open_set_score(dist: np.ndarray, doubt: np.ndarray, params: Dict[str, float]) -> np.ndarray:
    """Unknown score (N) from distances (N) and doubts (N) with fitted ``params``."""
    return ((np.asarray(dist) - params["dist_loc"]) / params["dist_scale"]
            + (np.asarray(doubt) - params["doubt_loc"]) / params["doubt_scale"])


def fit_open_set(loo_dist: np.ndarray, loo_doubt: np.ndarray, doubt_mask: Optional[np.ndarray],
                 quantile: float) -> Dict[str, float]:
    """Fit the standardisation and threshold from held-out values of the stored samples.

    ``loo_dist`` (N): distance of each sample to its nearest *other* sample (NaN if none);
    ``loo_doubt`` (N): doubt of each sample's leave-one-out prediction; ``doubt_mask`` (N bool)
    marks the samples whose held-out doubt is meaningful (their class has another sample);
    None means all. Returns the dict of :data:`OPEN_SET_KEYS`.
    """
    dist = np.asarray(loo_dist, dtype=np.float64)
    doubt = np.asarray(loo_doubt, dtype=np.float64)
    mask = np.ones(dist.shape, bool) if doubt_mask is None else np.asarray(doubt_mask, bool)
    have = np.isfinite(dist)
    dl, ds = _robust(dist[have])
    ql, qs = _robust(doubt[have & mask])
    params = {"dist_loc": dl, "dist_scale": ds, "doubt_loc": ql, "doubt_scale": qs, "threshold": float("inf")}
    ref = have & mask if np.any(have & mask) else have
    if np.any(ref):
        params["threshold"] = float(np.quantile(open_set_score(dist[ref], doubt[ref], params), quantile))
    return params
