"""Held-out nearest neighbours of the stored samples, kept up to date on add and remove.

Each stored sample keeps its k most similar *other* samples: similarities (N x k, descending,
-inf where there is none) and indices (N x k, -1 where none). The unknown score uses the first
column (distance to the nearest other sample); the k-NN head votes with all k. Pure functions:
inputs are never modified.
"""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

__all__ = ["appended", "initial", "removed"]

Lists = Tuple[np.ndarray, np.ndarray]


def initial(G: np.ndarray, k: int) -> Lists:
    """Neighbour lists from the gram matrix G (NxN) of the stored points (G is left unchanged)."""
    n = G.shape[0]
    sim = np.full((n, k), -np.inf)
    idx = np.full((n, k), -1, np.int64)
    kk = min(k, n - 1)
    if kk <= 0:
        return sim, idx
    diag = G.diagonal().copy()
    np.fill_diagonal(G, -np.inf)  # borrowed, restored below
    try:
        best = np.argmax(G, axis=1)[:, None] if kk == 1 else np.argpartition(-G, kk - 1, axis=1)[:, :kk]
        vals = np.take_along_axis(G, best, axis=1).astype(np.float64)
    finally:
        G[np.diag_indices_from(G)] = diag
    order = np.argsort(-vals, axis=1, kind="stable")
    sim[:, :kk] = np.take_along_axis(vals, order, axis=1)
    idx[:, :kk] = np.take_along_axis(best, order, axis=1)
    return sim, idx


def appended(sim: np.ndarray, idx: np.ndarray, sims: np.ndarray) -> Lists:
    """Lists after appending a sample whose similarities to the N old samples are ``sims`` (N)."""
    n_old, k = sims.size, sim.shape[1]
    sim = np.vstack([sim, np.full((1, k), -np.inf)])
    idx = np.vstack([idx, np.full((1, k), -1, np.int64)])
    if n_old:
        rows = np.flatnonzero(sims > sim[:n_old, -1])
        if rows.size:
            cs = np.hstack([sim[rows], sims[rows, None]])
            ci = np.hstack([idx[rows], np.full((rows.size, 1), n_old, np.int64)])
            o = np.argsort(-cs, axis=1, kind="stable")[:, :k]
            sim[rows], idx[rows] = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
        top = np.argsort(-sims, kind="stable")[:k]
        sim[n_old, :top.size], idx[n_old, :top.size] = sims[top], top
    return sim, idx


def removed(sim: np.ndarray, idx: np.ndarray, i: int, similarities: Callable[[np.ndarray], np.ndarray]) -> Lists:
    """Lists after deleting sample i. ``similarities(rows)`` must return the similarities
    (len(rows) x (N-1)) of the given remaining samples to all remaining samples."""
    sim, idx = np.delete(sim, i, 0), np.delete(idx, i, 0)
    stale = np.flatnonzero(np.any(idx == i, axis=1))
    idx = np.where(idx > i, idx - 1, idx)
    n, k = sim.shape[0], sim.shape[1]
    if stale.size:
        S = similarities(stale)
        S[np.arange(stale.size), stale] = -np.inf
        kk = min(k, n - 1)
        sim[stale], idx[stale] = -np.inf, -1
        if kk > 0:
            o = np.argsort(-S, axis=1, kind="stable")[:, :kk]
            sim[stale, :kk], idx[stale, :kk] = np.take_along_axis(S, o, 1), o
    return sim, idx
