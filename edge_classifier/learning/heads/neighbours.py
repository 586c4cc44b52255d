"""Capture groups and held-out nearest neighbours of the stored samples, kept up to date.

    held = HeldOut(k=1, radius=DUPLICATE_DISTANCE)
    held.rebuild(G)                      # G: NxN inner products of the stored (unit) points
    held.append(sims, similarities)      # sims: N inner products of a new point with the old
    held.remove(i, similarities)         # after sample i was deleted from the store
    held.groups, held.sizes, held.sim, held.idx, held.blocks()

A *capture group* is a connected component of the graph linking two stored samples whose
cosine distance ``1 - a.b`` is below ``radius``: exact duplicates, or the bursts of
near-identical frames a held button captures in front of a still object. Held-out statistics
(the unknown threshold, the temperature, the k-NN votes) leave a whole group out, never one
member alone: a new frame is a new capture, and its distance to the stored samples is not the
(near-zero) distance between two frames of one burst. Group labels are the smallest storage
index of the group's members.

Each stored sample keeps its k most similar samples *outside its group*: similarities (N x k,
descending, -inf where there is none) and indices (N x k, -1 where none). The unknown score
uses the first column; the k-NN head votes with all k. ``similarities(rows, cols=None)``
callbacks return the inner products (len(rows) x len(cols), all samples by default) of stored
samples, the store already updated.
"""

from __future__ import annotations

from typing import Callable, Iterator, Tuple

import numpy as np

__all__ = ["DUPLICATE_DISTANCE", "HeldOut", "capture_groups"]

#: Cosine distance (in the heads' normalised space) below which two samples are one capture.
#: MobileNet V1 on a still scene: 0.001-0.005 between frames for sensor noise alone,
#: 0.01-0.03 with a 2-4 pixel shake and a few per cent of exposure change. TrashNet's 2,527
#: photos have a median nearest-neighbour distance of 0.15 (1 % below 0.017, 5 % below 0.06);
#: 19 pairs lie within 0.02, three of them one photo filed under two classes.
DUPLICATE_DISTANCE = 0.02

Similarities = Callable[..., np.ndarray]


def capture_groups(G: np.ndarray, radius: float) -> np.ndarray:
    """Group labels (N int64, the smallest member index) from the gram matrix G (NxN)."""
    n = G.shape[0]
    labels = np.arange(n, dtype=np.int64)
    if n < 2:
        return labels
    near = G > 1.0 - radius
    np.fill_diagonal(near, False)
    rows = np.flatnonzero(near.any(axis=1))
    if rows.size == 0:
        return labels
    near = near[np.ix_(rows, rows)]
    seen = np.zeros(rows.size, bool)
    for start in range(rows.size):  # breadth-first search, one level per step
        if seen[start]:
            continue
        member = np.zeros(rows.size, bool)
        member[start] = seen[start] = True
        frontier = np.array([start])
        while frontier.size:
            reached = near[frontier].any(axis=0) & ~seen
            seen |= reached
            member |= reached
            frontier = np.flatnonzero(reached)
        labels[rows[member]] = rows[start]
    return labels


class HeldOut:
    """Capture groups and each sample's k nearest samples outside its group."""

    def __init__(self, k: int, radius: float) -> None:
        self.k, self.radius = int(k), float(radius)
        self.rebuild(np.zeros((0, 0)))

    @property
    def sizes(self) -> np.ndarray:
        """Size of each sample's group (N)."""
        return np.bincount(self.groups, minlength=self.groups.size)[self.groups]

    def blocks(self) -> Iterator[np.ndarray]:
        """Members of the groups of two or more, as (groups x size) index arrays, one per size."""
        sizes = np.bincount(self.groups, minlength=self.groups.size)
        if not np.any(sizes > 1):
            return
        order = np.argsort(self.groups, kind="stable")
        for s in np.unique(sizes[sizes > 1]):
            members = np.isin(self.groups[order], np.flatnonzero(sizes == s))
            yield order[members].reshape(-1, int(s))

    # -- changes -----------------------------------------------------------------------------
    def rebuild(self, G: np.ndarray) -> None:
        """Groups and lists from the gram matrix G (NxN), which is borrowed and restored."""
        n = G.shape[0]
        self.groups = capture_groups(G, self.radius) if n else np.zeros(0, np.int64)
        self.sim = np.full((n, self.k), -np.inf)
        self.idx = np.full((n, self.k), -1, np.int64)
        if n < 2:
            return
        r, c = self._same_group_pairs(np.arange(n))
        saved = G[r, c].copy()
        G[r, c] = -np.inf
        try:
            self._fill(np.arange(n), G)
        finally:
            G[r, c] = saved

    def append(self, sims: np.ndarray, similarities: Similarities) -> None:
        """A sample was appended; ``sims`` (N) are its inner products with the N old samples."""
        n_old = sims.size
        merged = np.unique(self.groups[sims > 1.0 - self.radius])
        label = int(merged[0]) if merged.size else n_old
        groups = np.append(self.groups, label)
        groups[np.isin(groups, merged)] = label
        self.groups = groups
        self.sim = np.vstack([self.sim, np.full((1, self.k), -np.inf)])
        self.idx = np.vstack([self.idx, np.full((1, self.k), -1, np.int64)])
        if n_old == 0:
            return
        outside = groups[:n_old] != label
        rows = np.flatnonzero(outside & (sims > self.sim[:n_old, -1]))
        if rows.size:
            cs = np.hstack([self.sim[rows], sims[rows, None]])
            ci = np.hstack([self.idx[rows], np.full((rows.size, 1), n_old, np.int64)])
            o = np.argsort(-cs, axis=1, kind="stable")[:, :self.k]
            self.sim[rows], self.idx[rows] = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
        self._fill(np.array([n_old]), np.where(outside, sims, -np.inf)[None, :])
        if merged.size > 1:  # two groups became one: their lists may hold new group mates
            self._recompute(np.flatnonzero(groups[:n_old] == label), similarities)

    def remove(self, i: int, similarities: Similarities) -> None:
        """Sample i was deleted from the store (later indices shifted down)."""
        groups = self.groups.copy()
        mates = np.flatnonzero(groups == groups[i])
        mates = mates[mates != i]
        if mates.size:
            groups[mates] = mates[0]  # the group is now named after its smallest other member
        groups = np.delete(groups, i)
        groups = np.where(groups > i, groups - 1, groups)
        mates = np.where(mates > i, mates - 1, mates)
        stale = np.flatnonzero(np.any(self.idx == i, axis=1))
        stale = np.where(stale > i, stale - 1, stale)[stale != i]
        self.sim, self.idx = np.delete(self.sim, i, 0), np.delete(self.idx, i, 0)
        self.idx = np.where(self.idx > i, self.idx - 1, self.idx)
        if mates.size >= 2:  # a chain can fall apart without its link
            parts = mates[capture_groups(similarities(mates, mates), self.radius)]
            if np.unique(parts).size > 1:
                groups[mates] = parts
                stale = np.union1d(stale, mates)
        self.groups = groups
        if stale.size:
            self._recompute(stale, similarities)

    # -- internals -----------------------------------------------------------------------------
    def _same_group_pairs(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(positions into ``rows``, sample indices) of every sample in the group of each row."""
        n = self.groups.size
        sizes = np.bincount(self.groups, minlength=n)
        order = np.argsort(self.groups, kind="stable")
        start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        label = self.groups[rows]
        count = sizes[label]
        r = np.repeat(np.arange(rows.size), count)
        offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        return r, order[np.repeat(start[label], count) + offset]

    def _recompute(self, rows: np.ndarray, similarities: Similarities) -> None:
        S = np.array(similarities(rows), dtype=np.float64)
        r, c = self._same_group_pairs(rows)
        S[r, c] = -np.inf
        self._fill(rows, S)

    def _fill(self, rows: np.ndarray, S: np.ndarray) -> None:
        """Lists of ``rows`` from their similarities S (len(rows) x N, group mates at -inf)."""
        kk = min(self.k, S.shape[1])
        self.sim[rows], self.idx[rows] = -np.inf, -1
        if kk <= 0:
            return
        best = np.argmax(S, axis=1)[:, None] if kk == 1 else np.argpartition(-S, kk - 1, axis=1)[:, :kk]
        vals = np.take_along_axis(S, best, axis=1).astype(np.float64)
        order = np.argsort(-vals, axis=1, kind="stable")
        vals, best = np.take_along_axis(vals, order, 1), np.take_along_axis(best, order, 1)
        found = np.isfinite(vals)
        sim, idx = self.sim[rows], self.idx[rows]
        sim[:, :kk] = np.where(found, vals, -np.inf)
        idx[:, :kk] = np.where(found, best, -1)
        self.sim[rows], self.idx[rows] = sim, idx
