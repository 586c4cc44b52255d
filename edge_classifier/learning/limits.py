"""The per-class sample limit: what is dropped when a class is full.

When a capture takes a class over ``head.max_samples_per_class``, samples are dropped until the
class holds 90 % of the maximum, so the head is refitted once per many captures rather than on
every one while a button is held. ``head.drop_policy`` picks which:

- ``oldest``: the oldest samples (first in, first out);
- ``redundant``: repeatedly the sample most similar (cosine of its frame embedding) to another
  sample of the class — the one that adds least — so rare views survive a long hold.
"""

from __future__ import annotations

from typing import List

import numpy as np

REFILL_FRACTION = 0.9


def redundant_order(frames: np.ndarray, drop: int) -> List[int]:
    """Indices of ``drop`` rows of ``frames`` (NxD) to remove, most redundant first."""
    x = frames / np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    alive = np.ones(len(x), dtype=bool)
    out = []
    for _ in range(drop):
        nearest = np.where(alive, sim[:, alive].max(axis=1) if alive.sum() > 1 else -np.inf,
                           -np.inf)
        victim = int(np.argmax(nearest))
        out.append(victim)
        alive[victim] = False
    return out


def over_limit(store, name: str, limit: int, policy: str = "oldest") -> List[str]:
    """Ids of the samples of class ``name`` to drop so it holds 90 % of ``limit`` again
    (none while it is within the limit), chosen by ``policy``: ``oldest`` or ``redundant``."""
    ids = store.sample_ids(name)
    if len(ids) <= limit:
        return []
    keep = max(1, int(limit * REFILL_FRACTION))
    drop = len(ids) - keep
    if policy == "redundant":
        frames = np.stack([store.views(name, sid)[0] for sid in ids])
        return [ids[i] for i in redundant_order(frames, drop)]
    return ids[:drop]
