"""A small deterministic L-BFGS minimiser (no learning rate to tune; SciPy is not a dependency)."""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

__all__ = ["lbfgs"]


def lbfgs(fun: Callable[[np.ndarray], Tuple[float, np.ndarray]], x0: np.ndarray, max_iter: int = 500,
          memory: int = 10, gtol: float = 1e-5, ftol: float = 1e-10) -> Tuple[np.ndarray, int]:
    """Minimise a smooth function with L-BFGS and a backtracking (Armijo) line search.

    ``fun(x) -> (value, gradient)`` on flat float64 vectors (P). Stops when the largest
    gradient entry is below ``gtol * max(1, |value|)``, when the relative decrease falls below
    ``ftol``, or after ``max_iter`` iterations. Returns (x, iterations). ``x0`` is not modified.
    """
    x = np.array(x0, dtype=np.float64)
    f, g = fun(x)
    s_hist, y_hist, rho_hist = [], [], []
    it = 0
    for it in range(1, max_iter + 1):
        if np.max(np.abs(g)) <= gtol * max(1.0, abs(f)):
            break
        # two-loop recursion
        q = g.copy()
        alphas = []
        for s, yv, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
            a = rho * (s @ q)
            alphas.append(a)
            q -= a * yv
        if s_hist:
            q *= (s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1])
        else:
            q /= max(np.linalg.norm(g), 1e-12)
        for (s, yv, rho), a in zip(zip(s_hist, y_hist, rho_hist), reversed(alphas)):
            b = rho * (yv @ q)
            q += (a - b) * s
        d = -q
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            s_hist, y_hist, rho_hist = [], [], []
            d = -g / max(np.linalg.norm(g), 1e-12)
            slope = float(g @ d)
        step = 1.0
        for _ in range(40):
            x_new = x + step * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        s_vec, y_vec = x_new - x, g_new - g
        sy = float(s_vec @ y_vec)
        if sy > 1e-12 * float(y_vec @ y_vec):
            s_hist.append(s_vec)
            y_hist.append(y_vec)
            rho_hist.append(1.0 / sy)
            if len(s_hist) > memory:
                s_hist.pop(0), y_hist.pop(0), rho_hist.pop(0)
        decrease = f - f_new
        x, f, g = x_new, f_new, g_new
        if decrease <= ftol * max(1.0, abs(f)):
            break
    return x, it
