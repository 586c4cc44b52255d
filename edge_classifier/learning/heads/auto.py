"""The ``auto`` head: RBF kernel ridge on a budget of landmarks, exact while N <= budget.

    head = AutoHead(landmarks=512).fit(X, y, ["bottle", "can"])
    head.add(x, 0)                     # O(m^2): used by the very next prediction
    job = head.calibration_job()       # heavy part (temperature, unknown threshold, drift-free
    head.apply_calibration(job())      # system), e.g. run job() in a background thread

Model: ``F(x) = k(L, x) @ alpha`` (subset of regressors, see :mod:`.nystrom`) with up to
``landmarks`` (m) landmarks L. Every stored sample becomes a landmark until the budget is full
(exact copies excepted), so up to m samples the head *is* the ``kernel`` head (exact kernel
ridge onto centred one-hot targets, same leave-one-out calibration and unknown threshold):
there is no switch and no cliff. Beyond m the landmarks stay fixed and the head is the best
function in their span (measured on TrashNet with every sample, ~1,770 of them: 0.908 with
1,024 landmarks against 0.921 for exact kernel ridge; see the README).

Costs: head memory O(m^2 + m*D) plus the stored points (needed to remove a sample exactly and
to recalibrate): a head fitted from the store's rows (:meth:`AutoHead.fit_rows`, what the
Learner does) reads them from the store's samples and holds only references; one fitted from a
matrix keeps them as float16 (2*D bytes a sample; :mod:`.points`). Adding or removing a sample is a
rank-one update of the m x m system, O(m^2 + m*D): three matrix-vector products, the update of
the inverse itself kept as a pending factor (:mod:`.lowrank`, folded in every 64 edits, gone at a
recalibration), a removed sample's stored point left as a hole until the buffer next grows;
removing r samples at once one Woodbury update; a fit O(N*m*D + N*m^2); a query O(m*D)
whatever N, with what only changes with the samples computed once per change.
``calibration_job()`` (O(N*m*D)) refits the temperature and the unknown threshold on
leave-one-out scores and rebuilds the system from scratch (no rounding drift); ``fit`` runs it
at once, ``add``/``remove`` leave the previous calibration in place and set
``calibration_stale``. Saved heads load without any
refit: the system, the weights and the calibration are in the state.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import _positive
from .calibration import softmax
from edge_classifier.errors import (EmptyHeadError, InvalidEmbeddingError, InvalidLabelError,
                                    InvalidParameterError, SampleNotFoundError)
from .linalg import factor_append
from .lowrank import PendingMatrix
from .nystrom import factor_dot, kernel_values, pick_landmarks, rank_update, row_chunks
from .openset import fit_open_set, open_set_score
from .preprocess import as_embeddings, as_labels, check_class_names, merge_views, normalise
from .autocal import calibrate, point_features
from .autostate import KernelForm, head_state, restore_head
from .points import OwnPoints, StorePoints, merged_points

__all__ = ["AutoHead"]


def _stacked(X: np.ndarray, views) -> np.ndarray:
    """A sample given as x (1xD) and its extra views (1xVxD or None) in the store's form (the
    views stacked after x, VxD float32)."""
    if views is None:
        return X
    return np.vstack([X, as_embeddings(np.asarray(views).reshape(-1, X.shape[1]), X.shape[1],
                                       name="views")])

COPY_RESIDUAL = 1e-4  # a sample this close (kernel residual) to the landmarks' span is no landmark


class AutoHead:
    """Landmark kernel ridge with exact rank-one updates (see the module docstring)."""

    name = "auto"
    default_temperature = 0.1
    temperature_prior_weight = 10.0

    def __init__(self, landmarks: int = 1024, gamma: float = 2.0, lam: float = 0.01,
                 power: float = 0.75, unknown_quantile: float = 0.95) -> None:
        if isinstance(landmarks, bool) or not isinstance(landmarks, (int, np.integer)) or landmarks < 1:
            raise InvalidParameterError(f"landmarks must be a positive integer, got {landmarks!r}")
        self.landmarks = int(landmarks)
        self.gamma = _positive(gamma, "gamma")
        self.lam = _positive(lam, "lam")
        self.power = _positive(power, "power")
        q = _positive(unknown_quantile, "unknown_quantile")
        if q > 1.0:
            raise InvalidParameterError(f"unknown_quantile must be in (0, 1], got {unknown_quantile}")
        self.unknown_quantile = q
        self._classes: List[str] = []
        self._dim: Optional[int] = None
        self._version = 0
        self._reset(0)

    def params(self) -> Dict[str, Any]:
        return {"landmarks": self.landmarks, "gamma": self.gamma, "lam": self.lam,
                "power": self.power, "unknown_quantile": self.unknown_quantile}

    def _reset(self, dim: int) -> None:
        C = len(self._classes)
        self._L = np.zeros((0, dim), np.float32)  # landmarks
        self._lsq = np.zeros(0)
        self._owner = np.zeros(0, np.int64)  # sample index of each landmark, -1: deleted
        self._Linv = np.zeros((0, 0))
        self._P = np.zeros((0, 0))
        self._b = np.zeros((0, C))
        self._s = np.zeros(0)
        self._pts: Any = OwnPoints(np.zeros((0, dim), np.float16))  # stored points (.points)
        self._land = np.zeros(0, np.int64)  # landmark of each sample, -1: none
        self._y = np.zeros(0, np.int64)
        self._alpha = np.zeros((0, C))
        self._alpha32 = np.zeros((0, C), np.float32)
        self._H = self._GA = np.zeros((0, C + 1))
        self._temperature = self.default_temperature
        self._open = fit_open_set(np.zeros(0), np.zeros(0), None, self.unknown_quantile)
        self._loo: Optional[np.ndarray] = None
        self._loo_kept: Tuple[int, Optional[np.ndarray]] = (-1, None)  # (version, loo) of a job
        self._groups = np.zeros(0, np.int64)
        self._stale = False

    # ------------------------------------------------------------------ properties
    @property
    def _P(self) -> np.ndarray:
        """The system's inverse ``inv(Phi.T Phi + lam*I)`` as an array (pending edits folded)."""
        return self._Pm.full()

    @_P.setter
    def _P(self, value: np.ndarray) -> None:
        self._Pm = PendingMatrix(value)

    @property
    def classes(self) -> List[str]:
        return list(self._classes)

    @property
    def dim(self) -> Optional[int]:
        return self._dim

    @property
    def n_samples(self) -> int:
        return int(self._y.shape[0])

    @property
    def n_landmarks(self) -> int:
        return int(self._L.shape[0])

    @property
    def capture_groups(self) -> np.ndarray:
        """Capture group of each sample (its smallest member's index) at the last calibration."""
        return self._groups.copy()

    @property
    def n_orphans(self) -> int:
        """Landmarks whose sample was removed (kept in the basis until the next fit)."""
        return int(np.count_nonzero(self._owner < 0))

    @property
    def labels(self) -> np.ndarray:
        return self._y.copy()

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self._y, minlength=len(self._classes)).astype(np.int64)

    @property
    def temperature(self) -> float:
        return float(self._temperature)

    @property
    def unknown_threshold(self) -> float:
        return float(self._open["threshold"])

    @property
    def calibration_stale(self) -> bool:
        """Samples changed since the temperature and unknown threshold were fitted."""
        return self._stale

    @property
    def points_from_store(self) -> bool:
        """The stored points are the store's samples (see :mod:`.points`): a loaded head needs
        them handed back (:meth:`attach_points`), and :meth:`add` takes the sample's ``item``."""
        return self._pts.kind == "store"

    def attach_points(self, items) -> None:
        """Hand a loaded head whose points are the store's (:attr:`points_from_store`) its
        samples in the store's in-memory form, in the head's order: a list, or a function
        returning one when they are first needed (nothing else than these reads them)."""
        if self._pts.kind != "store":
            raise InvalidParameterError("this head keeps its own points")
        self._pts.attach(items)

    def stored_items(self) -> list:
        """The store's samples the points are read from, in the head's order (the list
        itself: not to be changed); :attr:`points_from_store` heads only."""
        if self._pts.kind != "store":
            raise InvalidParameterError("this head keeps its own points")
        return self._pts.items()

    def points_match(self, count: int = 8) -> bool:
        """Whether the handed-back samples are the head's: up to ``count`` landmarks, spread
        over them, equal their sample's point bit for bit (and the number of samples agrees)."""
        try:
            if len(self._pts.items()) != self.n_samples:
                return False
            live = np.flatnonzero(self._owner >= 0)
            pick = live[np.unique(np.linspace(0, live.size - 1, min(count, live.size))
                                  .round().astype(np.int64))] if live.size else live
            got = merged_points([self._pts.items()[int(self._owner[j])] for j in pick],
                                self._pts.views, self.power, self._dim, rounded=False)
        except (ValueError, IndexError):  # (the state and head errors are ValueErrors too)
            return False
        return bool(np.array_equal(got, self._L[pick]))

    @property
    def inner(self) -> KernelForm:
        """The head as the exporter reads a kernel head (landmarks as its points)."""
        return KernelForm(self)

    def nbytes(self) -> int:
        """Memory held by the head's arrays."""
        arrays = (self._L, self._Linv, self._b, self._alpha, self._alpha32,
                  self._land, self._y, self._owner)
        return int(sum(a.nbytes for a in arrays)) + self._Pm.nbytes + self._pts.nbytes + \
            (0 if self._loo is None else self._loo.nbytes)

    # ------------------------------------------------------------------ changes
    def fit(self, X, y, class_names: Optional[Sequence[str]] = None, views=None) -> "AutoHead":
        """Replace all samples by X (NxD raw embeddings) with labels y; see the package docstring."""
        X = as_embeddings(X)
        if X.shape[0] == 0:
            raise EmptyHeadError("cannot fit a head on no samples")
        if class_names is None:
            ya = np.asarray(y)
            ok = ya.size and np.issubdtype(ya.dtype, np.number) and ya.ndim == 1
            class_names = [str(i) for i in range(max(int(ya.max()) + 1, 1) if ok else 1)]
        names = check_class_names(class_names)
        labels = as_labels(y, X.shape[0], len(names))
        n, d = X.shape
        V = None if views is None else np.asarray(views)
        if V is not None and (V.ndim not in (2, 3) or V.shape[0] != n):
            merge_views(X[:1], V, self.power, d)  # raises the shape error
        return self._fit_merged(
            lambda rows: merge_views(X[rows], None if V is None else V[rows], self.power, d),
            n, d, labels, names, None)

    def fit_rows(self, rows, y, class_names: Sequence[str]) -> "AutoHead":
        """:meth:`fit` on samples read a few at a time: ``rows`` is a
        :class:`~edge_classifier.learning.compact.ViewRows` (``len``, ``dim``, ``take(rows)`` ->
        len x V x D float32, the sample itself first). The same head as ``fit`` on the stacked
        matrix, bit for bit, without that matrix (what the device fits from its store)."""
        n, d = len(rows), int(rows.dim)
        if n == 0:
            raise EmptyHeadError("cannot fit a head on no samples")
        names = check_class_names(class_names)
        labels = as_labels(y, n, len(names))

        def merged(which):
            V = rows.take(which)
            X = as_embeddings(V[:, 0], d)
            return merge_views(X, V[:, 1:] if V.shape[1] > 1 else None, self.power, d)
        items = getattr(rows, "items", None)  # the store's samples: the head keeps references
        pts = None if items is None else StorePoints(list(items), rows.views, self.power, d)
        return self._fit_merged(merged, n, d, labels, names, pts)

    def _fit_merged(self, merged: Callable[[Any], np.ndarray], n: int, d: int,
                    labels: np.ndarray, names: List[str], pts) -> "AutoHead":
        """Fit on n samples whose merged points (len x D float32) ``merged(rows)`` gives for a
        slice or an index array of rows; ``pts`` holds their points (None: a buffer of the
        head's own, filled here)."""
        if pts is None:
            Z16 = np.empty((n, d), np.float16)  # in chunks: no N x D float32 temporaries
            for sl in row_chunks(n):
                Z16[sl] = merged(sl)
            pts = OwnPoints(Z16)
        cand = np.arange(n) if n <= self.landmarks else \
            np.unique(np.linspace(0, n - 1, self.landmarks).round().astype(np.int64))
        Zc = merged(cand)
        self._classes, self._dim = list(names), int(d)
        self._reset(self._dim)
        self._pts, self._y = pts, labels.copy()
        self._land = np.full(n, -1, np.int64)
        rows, Linv, sq = pick_landmarks(Zc, np.arange(cand.size), self.gamma, COPY_RESIDUAL)
        self._L, self._lsq, self._Linv = Zc[rows].astype(np.float32), sq, Linv
        del Zc  # (m x D: 4 MB at 1,024 landmarks, not kept through the calibration)
        self._owner = cand[rows].astype(np.int64)
        self._land[self._owner] = np.arange(rows.size)
        self._version += 1
        self.apply_calibration(self.calibration_job()())
        return self

    def add_class(self, name: str) -> int:
        """Append a class without samples; returns its label."""
        self._classes = check_class_names(self._classes + [name])
        self._b = np.hstack([self._b, np.zeros((self._b.shape[0], 1))])
        # held-out scores (kept, or of a job under way) have a column too few from now on
        self._version += 1
        self._loo = None
        self._solve()
        return len(self._classes) - 1

    def add(self, x, label: int, views=None, item=None) -> int:
        """Absorb one sample (O(m^2)); returns its index. The calibration is left stale.
        ``item``: the sample as the store keeps it (x and views stacked, in its in-memory
        form), for a head that reads its points from the store (one built by
        :meth:`fit_rows`): the head keeps a reference to it, not a copy."""
        if not self._classes:
            raise InvalidLabelError("the head has no classes: call fit() or add_class() first")
        X = as_embeddings(x, self._dim, allow_1d=True, name="x")
        if X.shape[0] != 1:
            raise InvalidEmbeddingError(f"add() takes one embedding, got {X.shape[0]}")
        lab = int(as_labels([label], 1, len(self._classes))[0])
        v = None if views is None else np.asarray(views)[None]
        if self._pts.kind == "store":  # the point as the store's sample gives it
            item = _stacked(X, v) if item is None else item
            z = merged_points([item], self._pts.views, self.power, X.shape[1], rounded=False)
        else:
            z = merge_views(X, v, self.power, X.shape[1]).astype(np.float32)
        if self._dim is None:
            self._dim = X.shape[1]
            self._reset(self._dim)
        z16 = z.astype(np.float16)
        i = self.n_samples
        land, grow = -1, self.n_landmarks < self.landmarks
        if grow:  # could become a landmark: its features from the float32 point
            zsq = float(np.einsum("ij,ij->i", z, z, dtype=np.float64)[0])
            k = kernel_values((self._L @ z[0]).astype(np.float64)[:, None], self._lsq,
                              np.array([zsq]), self.gamma)[:, 0] if self.n_landmarks else np.zeros(0)
            phi = factor_dot(self._Linv, k)
        if grow and 1.0 - phi @ phi > COPY_RESIDUAL:
            land = self.n_landmarks
            phi = self._grow(z, zsq, k, phi)
            self._owner = np.append(self._owner, i)
        elif self.n_landmarks:  # stored as float16: its features from exactly what is stored
            phi = point_features({"land": np.array([-1]), "points": OwnPoints(z16), "L": self._L,
                                  "lsq": self._lsq, "gamma": self.gamma, "Linv": self._Linv},
                                 [0])[0][0]
        new_landmark = land >= 0 and self._H.shape[0] != phi.size  # H could not follow
        self._pts.append(z16[0], item)
        self._y = np.append(self._y, lab)
        self._land = np.append(self._land, land)
        self._rank_one(phi, lab, +1.0, solve=new_landmark)
        self._changed(solve=False)
        return i

    def _grow(self, z: np.ndarray, zsq: float, k: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Make point z (1xD) a landmark; returns its features in the grown space."""
        rho = float(np.sqrt(1.0 - phi @ phi))
        others = np.flatnonzero(self._land < 0)  # stored samples that are no landmark
        C = len(self._classes)
        a, d, brow, srow = np.zeros(phi.size), self.lam, np.zeros(C), 0.0
        if others.size:
            Phi_o, Zo, sq_o = point_features(self._geometry(), others)
            ko = kernel_values(Zo @ z[0].astype(np.float64)[:, None], sq_o, np.array([zsq]),
                               self.gamma)[:, 0]
            c = (ko - Phi_o @ phi) / rho
            a, d = Phi_o.T @ c, self.lam + float(c @ c)
            brow = np.bincount(self._y[others], weights=c, minlength=C)
            srow = float(c.sum())
        m = phi.size
        P = np.zeros((m + 1, m + 1))
        if others.size:
            u = self._P @ a
            sigma = d - float(a @ u)
            P[:m, :m] = self._P + np.outer(u, u) / sigma
            P[:m, m] = P[m, :m] = -u / sigma
            P[m, m] = 1.0 / sigma
        else:  # every stored sample is a landmark: 0 in the new coordinate, P grows diagonally
            P[:m, :m] = self._P
            P[m, m] = 1.0 / d
            if self._H.shape[0] == m:  # and so do H = P [b s] and G = Linv.T H (a zero row)
                zero = np.zeros((1, self._H.shape[1]))
                self._H, self._GA = np.vstack([self._H, zero]), np.vstack([self._GA, zero])
        self._P = P
        self._b = np.vstack([self._b, brow[None]])
        self._s = np.append(self._s, srow)
        self._Linv = factor_append(self._Linv, k, 1.0)
        self._L = np.vstack([self._L, z])
        self._lsq = np.append(self._lsq, zsq)
        return np.append(phi, rho)

    def remove(self, index: int) -> None:
        """Forget the sample at ``index`` (later indices shift down)."""
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise SampleNotFoundError(f"sample index must be an integer, got {index!r}")
        self.remove_many([int(index)])

    def remove_many(self, indices: Sequence[int]) -> None:
        """Forget several samples at once (one Woodbury update); indices as before the call."""
        idx = np.unique(np.asarray(indices, dtype=np.int64))
        if idx.size == 0:
            return
        if idx[0] < 0 or idx[-1] >= self.n_samples:
            raise SampleNotFoundError(f"no sample {idx.tolist()}: the head holds {self.n_samples}")
        keep = np.ones(self.n_samples, bool)
        keep[idx] = False
        Phi, _, _ = point_features(self._geometry(), idx)
        C = len(self._classes)
        T = np.zeros((idx.size, C))
        T[np.arange(idx.size), self._y[idx]] = 1.0
        shift = np.cumsum(~keep)  # removed samples at or before each index
        owner = np.where(self._owner >= 0, self._owner - shift[np.maximum(self._owner, 0)], -1)
        owner[np.isin(self._owner, idx)] = -1
        self._owner = owner
        self._pts.keep(keep)  # a snapshot still reads the removed rows
        self._y, self._land = self._y[keep], self._land[keep]
        if len(self._pts) == 0:
            self._reset(self._dim or 0)
            self._changed()
            return
        try:
            if idx.size == 1:
                self._rank_one(Phi[0], int(np.argmax(T[0])), -1.0)
            else:
                self._P = rank_update(self._P, Phi, -1.0)
                self._b, self._s = self._b - Phi.T @ T, self._s - Phi.sum(axis=0)
                self._solve()
        except np.linalg.LinAlgError:
            self._rebuild_system()
            self._solve()
        self._changed(solve=False)

    def remove_sample(self, x, label: int, views=None) -> int:
        """Forget the stored sample equal to x (D) with ``label``; returns the index it had."""
        X = as_embeddings(x, self._dim, allow_1d=True, name="x")
        v = None if views is None else np.asarray(views)[None]
        if self._pts.kind == "store":
            z = merged_points([_stacked(X, v)], self._pts.views, self.power, X.shape[1])
        else:
            z = merge_views(X, v, self.power, X.shape[1]).astype(np.float16).astype(np.float32)
        if self.n_samples == 0:
            raise SampleNotFoundError("the head holds no samples")
        lab = int(as_labels([label], 1, len(self._classes))[0])
        cand = np.flatnonzero(self._y == lab)
        if cand.size:
            d = np.abs(self._pts.take(cand) - z).max(axis=1)
            j = int(np.argmin(d))
            if d[j] <= 1e-6:
                self.remove(int(cand[j]))
                return int(cand[j])
        raise SampleNotFoundError(f"no stored sample of class {label} equals this embedding")

    def _rebuild_system(self) -> None:
        job = self.calibration_job(system_only=True)
        self._P, self._b, self._s = job()["system"]

    def _changed(self, solve: bool = True) -> None:
        self._version += 1
        self._stale = True
        self._loo = None
        if solve:
            self._solve()

    def _rank_one(self, phi: np.ndarray, label: int, sign: float, solve: bool = False) -> None:
        """Add (sign +1) or remove (-1) one sample's features ``phi`` with ``label``: P
        (Sherman-Morrison, a pending rank-one term), b and s, and the solution through
        ``H = P [b s]`` and ``G = Linv.T H``, each a rank-one change, O(m^2) in all."""
        u = self._Pm.matvec(phi)
        c = 1.0 + sign * float(phi @ u)
        if not c > 1e-9:
            raise np.linalg.LinAlgError("removing this sample leaves a singular system")
        e = np.zeros(len(self._classes) + 1)
        e[label] = e[-1] = 1.0
        r = e - np.append(self._b.T @ u, self._s @ u)
        self._Pm.add(u, -sign / c)
        b = self._b.copy()  # a snapshot may hold the old b
        b[:, label] += sign * phi
        self._b, self._s = b, self._s + sign * phi
        if solve or self._H.shape[0] != phi.size:
            self._solve()
            return
        self._H += (sign / c) * np.outer(u, r)
        self._GA += (sign / c) * np.outer(factor_dot(self._Linv.T, u), r)
        self._alpha_from_solution()

    def _solve(self) -> None:
        """The solution from scratch: ``H = P [b s]``, ``G = Linv.T H``, then alpha."""
        if self.n_samples == 0 or self.n_landmarks == 0:
            C = len(self._classes)
            self._H = self._GA = np.zeros((self.n_landmarks, C + 1))
        else:
            self._H = self._Pm.matvec(np.column_stack([self._b, self._s]))
            self._GA = factor_dot(self._Linv.T, self._H)
        self._alpha_from_solution()

    def _alpha_from_solution(self) -> None:
        """alpha = Linv.T P (b - s tbar.T) with the centring of the current class shares."""
        n, C = self.n_samples, len(self._classes)
        tbar = np.bincount(self._y, minlength=C) / max(n, 1)
        self._alpha = self._GA[:, :C] - np.outer(self._GA[:, C], tbar)
        self._alpha32 = self._alpha.astype(np.float32)

    def _geometry(self) -> Dict[str, Any]:
        """What :func:`.autocal.point_features` needs (no copies)."""
        return {"L": self._L, "lsq": self._lsq, "Linv": self._Linv, "gamma": self.gamma,
                "points": self._pts, "land": self._land}

    # ------------------------------------------------------------------ calibration
    def _snapshot(self) -> Dict[str, Any]:
        """The current state for :func:`.autocal.calibrate`: references to arrays that later
        changes replace rather than edit (appended points land beyond the snapshot's rows,
        removed ones are left in place); P is not needed (it is rebuilt)."""
        return {"L": self._L, "lsq": self._lsq, "owner": self._owner, "Linv": self._Linv,
                "alpha": self._alpha, "points": self._pts.frozen(), "land": self._land,
                "y": self._y, "n_classes": len(self._classes),
                "gamma": self.gamma, "lam": self.lam, "temperature": self._temperature,
                "quantile": self.unknown_quantile, "t0": self.default_temperature,
                "prior_weight": self.temperature_prior_weight, "version": self._version}

    def calibration_job(self, system_only: bool = False) -> Callable[[], Dict[str, Any]]:
        """A function (safe to run in another thread) returning a fresh calibration and
        system for the head as it is now; give its result to :meth:`apply_calibration`."""
        snap = self._snapshot()
        return lambda: calibrate(snap, system_only)

    def apply_calibration(self, result: Dict[str, Any]) -> bool:
        """Install a :meth:`calibration_job` result. If the head changed since the job was
        made, only the temperature and threshold are taken (still stale); returns True when
        the head is calibrated on its current samples."""
        if self.n_samples == 0:
            return False
        self._temperature, self._open = result["temperature"], dict(result["open"])
        if result["version"] != self._version:
            return False
        self._P, self._b, self._s = result["system"]
        # held-out scores of some samples only (beyond HELD_OUT_ROWS): loo_proba scores all
        self._loo = result["loo"] if result.get("every", True) else None
        self._groups = result["groups"]
        self._solve()
        self._stale = False
        return True

    def refresh(self) -> None:
        """Recalibrate now, in this thread."""
        if self.n_samples:
            self.apply_calibration(self.calibration_job()())

    # ------------------------------------------------------------------ queries
    def _query(self, X) -> Tuple[np.ndarray, np.ndarray]:
        """(raw scores Nq x C float32, similarities to the landmarks Nq x m float32)."""
        if self.n_samples == 0:
            raise EmptyHeadError("the head holds no samples: fit() or add() first")
        frame = self._query_frame(X)
        if frame is not None:
            return frame
        Zq = normalise(as_embeddings(X, self._dim, allow_1d=True), self.power)
        S = Zq @ self._L.T
        sq = np.einsum("ij,ij->i", Zq, Zq)
        return kernel_values(S, sq, self._frame_constants()["lsq32"], self.gamma) @ self._alpha32, S

    def _query_frame(self, X) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """:meth:`_query` of one frame (1xD float32, finite, non-negative: what the backbone
        gives) in fewer, fused steps, or None for anything else (the general path decides and
        raises). The point's norm is divided out of the D-long similarities rather than the
        point, and ``exp(-g|z-l|^2) = exp(2g(s-1)) * exp(-g(|l|^2-1)) * exp(-g(|z|^2-1))``:
        the landmarks' factor is folded into the weights once per change, the point's is 1 for
        a normalised point (0 for a zero one). Equal to the general path within float32
        rounding; after an invoke every NumPy call runs cold, so each one saved counts."""
        if type(X) is not np.ndarray or X.dtype != np.float32 or X.shape != (1, self._dim) \
                or self.power != 0.75 or self.n_landmarks == 0:
            return None
        x = X[0]
        with np.errstate(over="ignore", invalid="ignore"):
            if not x.min() >= 0.0:  # NaN or negative values
                return None
            p = np.sqrt(x)
            p *= np.sqrt(p)  # x ** 0.75, as normalise() computes it
            n2 = float(np.dot(p, p))
        if not n2 < np.inf:  # an infinite value (or one whose square overflows)
            return None
        consts = self._frame_constants()
        s = self._L @ p
        if n2 > 0.0:
            s *= np.float32(1.0 / np.sqrt(n2))
        g2 = consts["g2"]
        e = s * g2
        e -= g2
        np.exp(e, out=e)
        F = e @ consts["walpha"]
        if n2 == 0.0:  # a zero point: |z|^2 = 0, not 1
            F *= np.float32(np.exp(self.gamma))
        return F[None], s[None]

    def _frame_constants(self) -> Dict[str, Any]:
        """What every query needs and only changes with the samples, computed once per change:
        the landmarks' squared norms as float32, the classes without samples (None: none)
        and the live landmarks (None: all live, or none at all)."""
        key = (self._version, len(self._classes), self.n_landmarks)
        if getattr(self, "_consts_key", None) != key:
            empty = self.class_counts == 0
            live = self._owner >= 0
            self._consts = {"lsq32": self._lsq.astype(np.float32),
                            "g2": np.float32(2.0 * self.gamma),
                            "empty": empty if empty.any() else None,
                            "live": np.flatnonzero(live) if live.any() and not live.all() else None}
            self._consts_key = key
        if self._consts.get("alpha") is not self._alpha32:  # a new solution: new weights
            w = np.exp(-self.gamma * (self._lsq - 1.0))
            self._consts["walpha"] = (w[:, None] * self._alpha).astype(np.float32)
            self._consts["alpha"] = self._alpha32
        return self._consts

    def _masked(self, F: np.ndarray) -> np.ndarray:
        empty = self._frame_constants()["empty"]
        return F if empty is None else np.where(empty[None, :], -np.inf, F)

    def _proba(self, F: np.ndarray) -> np.ndarray:
        F = self._masked(F)
        if F.shape[0] != 1:
            return softmax(F / self._temperature)
        Z = F.astype(np.float64)  # one frame: softmax's steps, fewer calls (a sample is known)
        Z *= 1.0 / self._temperature
        Z -= Z.max()
        np.exp(Z, out=Z)
        Z /= Z.sum()
        return Z

    def _unknown(self, S: np.ndarray, P: np.ndarray) -> np.ndarray:
        live = self._frame_constants()["live"]
        if S.shape[1] == self.n_landmarks and live is not None:
            S = S[:, live]  # a deleted sample is not known (unless no landmark is left alive)
        best = S.max(axis=1) if S.shape[1] else np.full(S.shape[0], -np.inf)
        return open_set_score(1.0 - best, 1.0 - P.max(axis=1), self._open)

    def decision_function(self, X) -> np.ndarray:
        return self._masked(self._query(X)[0].astype(np.float64))

    def predict_proba(self, X) -> np.ndarray:
        return self._proba(self._query(X)[0])

    def unknown_score(self, X) -> np.ndarray:
        F, S = self._query(X)
        return self._unknown(S, self._proba(F))

    def predict(self, X) -> Tuple[np.ndarray, np.ndarray]:
        labels, P, _ = self.predict_detailed(X)
        return labels, P

    def predict_detailed(self, X) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        F, S = self._query(X)
        P = self._proba(F)
        score = self._unknown(S, P)
        labels = P.argmax(axis=1).astype(np.int64)
        labels[score > self._open["threshold"]] = -1
        return labels, P, score

    def loo_proba(self) -> np.ndarray:
        """Calibrated held-out probabilities (NxC) of the stored samples."""
        if self.n_samples == 0:
            raise EmptyHeadError("the head holds no samples: fit() or add() first")
        if self._loo is None:  # not kept since the last edit, or not of every sample
            snap = self._snapshot()
            loo = calibrate(snap, every=True)["loo"]
            if snap["version"] == self._version:
                self._loo = loo  # until the next edit
            return self._proba(loo)
        return self._proba(self._loo)

    def loo_proba_job(self) -> Callable[[], np.ndarray]:
        """:meth:`loo_proba` as a function safe to run in another thread, so that a caller on
        the device loop's thread can hand the work off (scoring every sample is a calibration's
        cost: about 2 s at 10,000 samples here). The result is kept for the head as it is now."""
        if self.n_samples == 0:
            raise EmptyHeadError("the head holds no samples: fit() or add() first")
        version, kept = self._loo_kept
        loo = self._loo if self._loo is not None else kept if version == self._version else None
        snap = self._snapshot() if loo is None else None
        empty, temperature = self._frame_constants()["empty"], self._temperature

        def run() -> np.ndarray:
            F = loo
            if F is None:
                F = calibrate(snap, every=True)["loo"]
                self._loo_kept = (snap["version"], F)  # one assignment: no edit is mixed in
            if empty is not None:
                F = np.where(empty[None, :], -np.inf, F)
            return softmax(F / temperature)
        return run

    # ------------------------------------------------------------------ persistence
    def to_state(self, copy: bool = True, frozen: bool = False
                 ) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        """(arrays for .npz, JSON-able metadata): the solved system and the calibration;
        ``copy=False``: the head's own arrays, to be written before the head is next edited;
        with ``frozen=True`` as well, arrays that later edits leave alone (a save written in
        another thread; see :func:`.autostate.head_state`)."""
        return head_state(self, copy, frozen)

    @classmethod
    def from_state(cls, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> "AutoHead":
        """Rebuild a saved head without refitting; :class:`StateError` if inconsistent."""
        return restore_head(cls, arrays, meta)
