"""Calibration of the ``auto`` head from a snapshot of its state (pure; runs in any thread).

    result = calibrate(head._snapshot())   # {"system", "temperature", "open", "loo", "version"}

Two passes over the stored samples in chunks (O(N*m*D), never an N x N matrix):

1. the system ``inv(Phi.T Phi + lam*I)``, ``Phi.T T`` and ``Phi.T 1`` rebuilt from the points
   (no drift from rank-one updates), and the capture groups: a sample and a landmark within
   cosine distance ``DUPLICATE_DISTANCE`` are linked, a landmark is the node of its sample, and
   groups are the connected components (with every sample a landmark these are exactly the
   kernel head's groups);
2. the leave-one-out scores from the hat diagonal ``h_i = phi_i P phi_i`` (capture groups of
   two or more left out as a block), and each sample's held-out distance: to the nearest
   landmark outside its group. The temperature and the unknown-score standardisation and
   threshold are then fitted exactly as the other heads fit them (:mod:`.base`), on every
   sample while all are landmarks, on the samples that are none beyond (``MIN_HONEST``).
   Beyond ``HELD_OUT_ROWS`` such samples, pass 2 scores about that many of them: whole
   capture groups, evenly spread: a temperature and a quantile need no more, and
   pass 2 costs as much as pass 1 (at 10,000 samples it was 1 s of a 2.4 s fit).
   ``every=True`` scores every sample (:meth:`AutoHead.loo_proba` asks for it).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from .calibration import fit_temperature, softmax
from .neighbours import DUPLICATE_DISTANCE
from .nystrom import Gram, connected_labels, factor_dot, kernel_values, row_chunks, split_groups
from .openset import fit_open_set

__all__ = ["calibrate", "point_features"]

#: Beyond the landmark budget, calibrate on the samples that are no landmark once there are this
#: many: a landmark sample's held-out score is far worse than a new frame's (TrashNet, 1,770
#: samples, 1,024 landmarks: 0.71 held-out accuracy vs 0.90 for the others and 0.91 on test
#: images; calibrating on all gave an ECE of 0.26, on these 0.03).
MIN_HONEST = 30

#: The most samples that are no landmark whose held-out scores the calibration is fitted on.
HELD_OUT_ROWS = 2048

#: A capture group larger than this is left out in the m x m system, not its own g x g block.
BLOCK_MAX = 512


def _points(snap: Dict[str, Any], idx) -> np.ndarray:
    """Stored points (len x D float32) of samples ``idx``: a landmark's own float32 copy."""
    land = snap["land"][idx]
    Z = snap["points"].take(idx)  # an OwnPoints or a StorePoints (.points): a new array
    is_land = land >= 0
    if np.any(is_land):
        Z[is_land] = snap["L"][land[is_land]]
    return Z


def point_features(snap: Dict[str, Any], idx) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features len x m, points len x D float64, squared norms) of stored samples ``idx``."""
    L = snap["L"]
    Z = _points(snap, idx)
    if L.shape[0] <= 512:  # as the kernel head: float64 products for small systems
        Z = Z.astype(np.float64)
        S = Z @ L.T.astype(np.float64)
    else:
        S = (Z @ L.T).astype(np.float64)
        Z = Z.astype(np.float64)
    sq = np.einsum("ij,ij->i", Z, Z)
    return factor_dot(kernel_values(S, sq, snap["lsq"], snap["gamma"]), snap["Linv"].T), Z, sq


def _kernel_chunk(snap: Dict[str, Any], sl, dtype) -> Tuple[np.ndarray, np.ndarray]:
    """(similarities to the landmarks, kernel values) of the samples ``sl`` (a slice or an
    index array)."""
    Z = _points(snap, sl).astype(dtype)
    S = Z @ snap["_Lt"]
    sq = np.einsum("ij,ij->i", Z, Z, dtype=np.float64)
    return S, kernel_values(S, sq, snap["lsq"], snap["gamma"])  # a new array: S is kept


def _chunk(snap: Dict[str, Any], sl: slice, dtype) -> Tuple[np.ndarray, np.ndarray]:
    """(similarities to the landmarks, features) of the samples in slice ``sl``."""
    S, K = _kernel_chunk(snap, sl, dtype)
    return S, K @ snap["_LinvT"]


def _group_edges(near: np.ndarray, alive: np.ndarray, start: int, node: np.ndarray
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Edges (node pairs) linking each sample of a chunk (rows of ``near``, from ``start``) to
    every live landmark it is near, as few as give the same groups: each sample to the first of
    them, that one to the others (once per pair). All the pairs would be N x m edges for one
    scene captured N times over (1.2 GB of indices and their labels at 10,000)."""
    near &= alive[None, :]
    r, c = np.nonzero(near)
    if r.size == 0:
        return r, c
    rows, at = np.unique(r, return_index=True)
    first = c[at]
    lead = np.repeat(first, np.diff(np.append(at, r.size)))  # each pair's row's first landmark
    other = lead != c
    pairs = np.unique(lead[other] * near.shape[1] + c[other])
    return (np.concatenate([rows + start, node[pairs // near.shape[1]]]),
            np.concatenate([node[first], node[pairs % near.shape[1]]]))


def held_out_rows(land: np.ndarray, groups: np.ndarray, every: bool = False
                  ) -> Optional[np.ndarray]:
    """The samples pass 2 scores (sorted indices), None for all: beyond ``HELD_OUT_ROWS``
    samples that are no landmark, capture groups evenly spread among theirs (each left out as
    one), as many as hold about that many samples on average."""
    honest = np.flatnonzero(land < 0)
    if every or honest.size <= HELD_OUT_ROWS:
        return None
    # evenly spread groups, not samples: a group picked through any one of its samples would
    # be in g times as often as a single sample, and then with all its g samples
    found, first = np.unique(groups[honest], return_index=True)
    order = found[np.argsort(first)]  # the groups in the order of their first sample
    size = np.bincount(groups, minlength=groups.size)[order]
    k = min(order.size, int(np.ceil(HELD_OUT_ROWS * order.size / size.sum())))
    pick = order[np.unique(np.linspace(0, order.size - 1, k).round().astype(np.int64))]
    return np.flatnonzero(np.isin(groups, pick))


def calibrate(snap: Dict[str, Any], system_only: bool = False, every: bool = False
              ) -> Dict[str, Any]:
    y, C, L = snap["y"], snap["n_classes"], snap["L"]
    n, m = y.size, L.shape[0]
    dtype = np.float64 if n <= 512 else np.float32  # as the kernel head's factor
    # L.T as a view where L has the dtype already (BLAS takes it transposed: no m x D copy)
    snap = dict(snap, _Lt=L.T.astype(dtype, copy=False), _LinvT=snap["Linv"].T.astype(dtype, copy=False))
    T = np.zeros((n, C))
    T[np.arange(n), y] = 1.0
    gram, b, s = Gram(m), np.zeros((m, C)), np.zeros(m)
    owner = snap["owner"]
    node = np.where(owner >= 0, owner, n + np.arange(m))
    ea, eb = [], []
    for sl in row_chunks(n):
        S, Phi = _chunk(snap, sl, dtype)
        gram.add(Phi)
        Phi = Phi.astype(np.float64)
        b += Phi.T @ T[sl]
        s += Phi.sum(axis=0)
        a, b_ = _group_edges(S > 1.0 - DUPLICATE_DISTANCE, owner >= 0, sl.start, node)
        ea.append(a)
        eb.append(b_)
    if not system_only:
        labels = connected_labels(n + m, np.concatenate(ea), np.concatenate(eb))
        groups, lgroup = labels[:n], labels[node]
        sizes = np.bincount(groups, minlength=n)
        # the system itself, kept to leave out a group too big for its n x n block (below)
        A64 = gram.total() if np.any(sizes > BLOCK_MAX) else None
    P, M = gram.solve(snap["lam"])
    out: Dict[str, Any] = {"system": (P, b, s), "version": snap["version"]}
    if system_only:
        return out
    counts = np.bincount(y, minlength=C)
    tbar = counts / n
    PhiTc = b - np.outer(s, tbar)  # Phi.T @ Tc
    W = P @ PhiTc
    rows = held_out_rows(snap["land"], groups, every)
    F = np.empty((n, C)) if rows is None else np.full((n, C), np.nan)
    h = np.empty(n) if rows is None else np.zeros(n)
    best = np.empty(n) if rows is None else np.full(n, -np.inf)
    # From the kernel values k of a chunk in one product each (no features): scores
    # F = phi W = k (Linv.T W), hat diagonal h = phi P phi = |R k|^2 with R = M Linv (P = M.T M).
    if dtype == np.float32:  # R in float32 from float32 copies: no m x m float64 temporary
        M32 = M.astype(np.float32, copy=False)  # (float32 already when m > FLOAT32_ABOVE)
        del M
        R = M32 @ snap["_LinvT"].T  # kept for the capture groups below
        del M32
    else:
        R = factor_dot(M, snap["Linv"])
        del M
    Wk = factor_dot(snap["Linv"].T, W).astype(dtype, copy=False)
    for sl in row_chunks(n if rows is None else rows.size):
        sl = sl if rows is None else rows[sl]
        S, K = _kernel_chunk(snap, sl, dtype)
        F[sl] = K @ Wk
        U = K @ R.T
        h[sl] = np.einsum("ij,ij->i", U, U, dtype=np.float64)
        del K, U
        S[(lgroup[None, :] == groups[sl, None]) | (owner < 0)[None, :]] = -np.inf
        best[sl] = S.max(axis=1) if m else -np.inf  # the max of S's own dtype: no copy
    Tc = T - tbar
    loo = Tc - (Tc - F) / np.maximum(1.0 - h, 1e-12)[:, None]
    for same_size in split_groups(groups):  # leave-group-out: Tc_g - inv(I - H_gg) (Tc_g - F_g)
        if rows is not None:  # the groups scored (whole: none is scored in part)
            same_size = same_size[np.isin(same_size[:, 0], rows)]
        if same_size.shape[1] > BLOCK_MAX:  # one still scene captured many times over
            for members in same_size:
                loo[members] = _left_out_in_m(snap, members, A64, snap["lam"], PhiTc, Tc, dtype)
            continue
        step = max(1, 256 // same_size.shape[1])  # ~256 samples at a time: bounded temporaries
        for start in range(0, same_size.shape[0], step):
            idx = same_size[start:start + step]
            # H_gg = Phi_g P Phi_g.T = U U.T with U = K_g R.T: one product for the whole batch
            U = (_kernel_chunk(snap, idx.ravel(), dtype)[1] @ R.T).reshape(idx.shape + (m,))
            H = (U @ U.transpose(0, 2, 1)).astype(np.float64)
            eye = np.eye(idx.shape[1])
            loo[idx] = Tc[idx] - np.linalg.solve(eye * (1.0 + 1e-12) - H, Tc[idx] - F[idx])
    out["loo"], out["groups"] = loo, groups
    out["every"] = rows is None  # loo has a row for every sample (else NaN where not scored)
    out["temperature"], out["open"] = _fit_calibration(snap, loo, groups, best, counts, rows)
    return out


def _left_out_in_m(snap: Dict[str, Any], members: np.ndarray, A: np.ndarray, lam: float,
                   PhiTc: np.ndarray, Tc: np.ndarray, dtype) -> np.ndarray:
    """Held-out scores of a group left out as one, in the m x m system rather than the group's
    g x g block: ``Phi_g inv(A + lam*I - Phi_g.T Phi_g) (Phi.T Tc - Phi_g.T Tc_g)``, the same
    scores, in O(g*m^2 + m^3) time and O(m^2) memory (the block is g x g: 800 MB for 10,000
    captures of one scene). ``A`` is the features' Gram sum (float64, m x m), left as it is."""
    def features(idx):
        return (_kernel_chunk(snap, idx, dtype)[1] @ snap["_LinvT"]).astype(np.float64)
    chunks = [members[start:start + 256] for start in range(0, members.size, 256)]
    G, rhs = np.zeros_like(A), PhiTc.copy()
    for idx in chunks:
        Phi = features(idx)
        G += Phi.T @ Phi
        rhs -= Phi.T @ Tc[idx]
    np.subtract(A, G, out=G)  # the system without the group
    G[np.diag_indices_from(G)] += lam
    try:
        X = np.linalg.solve(G, rhs)
    except np.linalg.LinAlgError:  # (lam on its diagonal: only if rounding undid it)
        X = np.linalg.lstsq(G, rhs, rcond=None)[0]
    del G
    return np.concatenate([features(idx) @ X for idx in chunks])


def _fit_calibration(snap, loo, groups, best, counts, rows=None):
    """(temperature, open-set parameters) from held-out scores, as :meth:`.base.Head._refresh`
    (of the samples ``rows`` only, if not None)."""
    y, C = snap["y"], snap["n_classes"]
    F = np.where((counts == 0)[None, :], -np.inf, loo)
    key = groups * C + y
    _, inverse, count = np.unique(key, return_inverse=True, return_counts=True)
    cal = counts[y] > count[inverse.ravel()]
    if rows is not None:
        scored = np.zeros(y.size, bool)
        scored[rows] = True
        cal &= scored
    honest = snap["land"] < 0  # beyond the budget: samples that are no landmark are held out
    if honest.sum() >= MIN_HONEST:  # like new frames (a landmark's own held-out score is not)
        cal &= honest
        best = np.where(honest, best, -np.inf)
    active = np.flatnonzero(counts > 0)
    t0 = snap["t0"]
    temperature = t0
    if active.size >= 2 and cal.any():
        ymap = np.searchsorted(active, y[cal])
        temperature = fit_temperature(F[cal][:, active], ymap, t0, snap["prior_weight"],
                                      t_init=snap["temperature"])
    P = softmax(F / temperature)
    sizes = np.bincount(groups, minlength=groups.size)[groups]
    dist = np.where(np.isfinite(best), 1.0 - best, np.nan)
    return temperature, fit_open_set(dist, 1.0 - P.max(axis=1), cal, snap["quantile"], 1.0 / sizes)
