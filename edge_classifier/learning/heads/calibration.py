"""Probability calibration: softmax with a fitted temperature, Platt scaling, F1 thresholds.

Heads produce raw class scores F (NxC). Probabilities are ``softmax(F / T)``; the temperature T
is fitted by minimising the negative log-likelihood of held-out (leave-one-out) scores of the
stored samples plus a weak log-normal prior ``w * (log T - log T0)**2`` that pulls T towards
the head's default ``T0`` when there are only a few samples (and keeps T finite when every
held-out prediction is right or wrong). With no usable held-out score, T = T0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["best_f1_threshold", "fit_platt", "fit_temperature", "sigmoid", "softmax"]


def softmax(F: np.ndarray) -> np.ndarray:
    """Row-wise softmax of NxC scores (``-inf`` entries get probability 0)."""
    F = np.asarray(F, dtype=np.float64)
    m = np.max(F, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    E = np.exp(F - m)
    return E / np.sum(E, axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function (any shape)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _objective(F: np.ndarray, y: np.ndarray, u: float, lt0: float, weight: float):
    """Penalised NLL of softmax(exp(u) * F) and its first two derivatives in u = -log T."""
    beta = np.exp(u)
    Z = beta * F
    m = Z.max(axis=1, keepdims=True)
    E = np.exp(Z - m)
    s = E.sum(axis=1)
    P = E / s[:, None]
    rows = np.arange(F.shape[0])
    nll = float(np.sum(np.log(s) + m[:, 0] - Z[rows, y]))
    mean_f = np.einsum("ij,ij->i", P, F)
    d1 = float(np.sum(mean_f - F[rows, y]))  # d nll / d beta
    d2 = float(np.sum(np.einsum("ij,ij->i", P, F * F) - mean_f ** 2))  # >= 0
    value = nll + weight * (u + lt0) ** 2
    grad = beta * d1 + 2.0 * weight * (u + lt0)
    hess = beta * d1 + beta * beta * d2 + 2.0 * weight
    return value, grad, hess


def fit_temperature(F: np.ndarray, y: np.ndarray, t0: float, weight: float = 2.0,
                    t_init: "float | None" = None) -> float:
    """Temperature T > 0 minimising the penalised NLL of ``softmax(F/T)`` (F: NxC, y: N).

    Safeguarded Newton iterations on ``u = -log T`` starting from ``t_init`` (default t0),
    each step at most a factor e**2 and backtracked until the objective decreases; T is kept
    within ``t0 * exp(+-10)``. Returns ``t0`` when F is empty or has fewer than two columns.
    """
    F = np.asarray(F, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if F.shape[0] == 0 or F.ndim != 2 or F.shape[1] < 2:
        return float(t0)
    lt0 = float(np.log(t0))
    lo, hi = -lt0 - 10.0, -lt0 + 10.0
    u = float(np.clip(-np.log(t_init if t_init else t0), lo, hi))
    value, grad, hess = _objective(F, y, u, lt0, weight)
    for _ in range(100):
        step = -grad / hess if hess > 0 else -np.sign(grad)
        step = float(np.clip(step, -2.0, 2.0))
        for _ in range(30):
            un = float(np.clip(u + step, lo, hi))
            vn, gn, hn = _objective(F, y, un, lt0, weight)
            if vn <= value:
                break
            step /= 2.0
        else:
            break
        done = abs(un - u) < 1e-8
        u, value, grad, hess = un, vn, gn, hn
        if done or abs(grad) < 1e-9 * max(1.0, F.shape[0]):
            break
    return float(np.exp(-u))


def fit_platt(f: np.ndarray, t: np.ndarray, prior: "tuple[float, float]" = (10.0, -5.0),
              strength: float = 1.0, iters: int = 50) -> "tuple[float, float]":
    """Platt scaling: (a, b) with ``P(t=1|f) = sigmoid(a*f + b)`` for scores f (N), targets t (N).

    Uses Platt's smoothed targets ((N+ + 1)/(N+ + 2) and 1/(N- + 2)) and Newton's method on the
    NLL plus ``strength/2 * |(a, b) - prior|^2``, so a handful of samples cannot flip the
    sigmoid; the default prior suits scores near 0/1 (probability 0.5 at f = 0.5). The slope is
    kept at least 1e-3 (probabilities increase with the score).
    """
    f = np.asarray(f, dtype=np.float64)
    t = np.asarray(t, dtype=bool)
    npos, nneg = int(t.sum()), int((~t).sum())
    target = np.where(t, (npos + 1.0) / (npos + 2.0), 1.0 / (nneg + 2.0))
    a0, b0 = float(prior[0]), float(prior[1])
    a, b = a0, b0
    for _ in range(iters):
        p = sigmoid(a * f + b)
        r = p - target
        w = np.maximum(p * (1.0 - p), 1e-12)
        g = np.array([r @ f + strength * (a - a0), r.sum() + strength * (b - b0)])
        H = np.array([[w @ (f * f) + strength, w @ f], [w @ f, w.sum() + strength]])
        step = np.linalg.solve(H, g)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    return max(float(a), 1e-3), float(b)


def best_f1_threshold(p: np.ndarray, t: np.ndarray, default: float = 0.5) -> float:
    """Probability threshold maximising F1 of ``p >= threshold`` against boolean targets t.

    Candidate thresholds are midpoints between consecutive distinct scores; returns ``default``
    when there is no positive target.
    """
    p = np.asarray(p, dtype=np.float64)
    t = np.asarray(t, dtype=bool)
    if not t.any():
        return float(default)
    order = np.argsort(-p, kind="mergesort")
    ps, ts = p[order], t[order]
    tp = np.cumsum(ts)
    fp = np.cumsum(~ts)
    f1 = 2.0 * tp / (tp + fp + t.sum())
    last = np.r_[ps[1:] != ps[:-1], True]  # only cut between distinct scores
    f1 = np.where(last, f1, -1.0)
    k = int(np.argmax(f1))
    nxt = ps[k + 1] if k + 1 < ps.size else ps[k] - 1e-3
    return float(np.clip((ps[k] + nxt) / 2.0, 1e-6, 1.0 - 1e-6))
