"""The common machinery of every head: sample store, checks, calibration, unknowns, persistence.

    head = KernelHead().fit(X, y, ["bottle", "can"])   # any subclass
    labels, P, score = head.predict_detailed(X)          # unknown where score > head.unknown_threshold

A head stores its samples as normalised points (see :mod:`.preprocess`) so that it can give
held-out predictions for them. Held out means with the sample's *capture group* left out too:
its exact or near-identical copies (see :mod:`.neighbours`). After every change (``fit``,
``add``, ``remove``, ``add_class``) it refreshes

* the temperature of its probabilities, fitted on the held-out scores (:mod:`.calibration`);
* the unknown-score standardisation and threshold (:mod:`.openset`), from the held-out
  nearest-neighbour distances and doubts, each group weighing as one sample.

Subclasses implement the model through a handful of hooks (``_fit_model``, ``_add_model``,
``_remove_model``, ``_update_solution``, ``_decision``, ``_loo_decision`` and, when they have
state worth saving, ``_model_arrays`` / ``_load_model``). ``self._held`` holds the capture
groups (``groups``, ``sizes``, ``blocks()``) for ``_loo_decision``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .calibration import fit_temperature, softmax
from edge_classifier.errors import (EmptyHeadError, InvalidEmbeddingError, InvalidLabelError, InvalidParameterError,
                     SampleNotFoundError, StateError)
from .neighbours import DUPLICATE_DISTANCE, HeldOut
from .openset import fit_open_set, open_set_score
from .preprocess import as_embeddings, as_labels, check_class_names, merge_views

__all__ = ["Head", "STATE_FORMAT"]

STATE_FORMAT = 1


def _positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise InvalidParameterError(f"{name} must be a positive number, got {value!r}")
    return v


class Head:
    """Base class of the classification heads (see the package docstring for the interface)."""

    name = "base"
    default_temperature = 0.1  # T0: prior temperature for the head's raw scores
    temperature_prior_weight = 2.0
    n_neighbours = 1  # held-out neighbours kept per stored sample
    duplicate_distance = DUPLICATE_DISTANCE  # closer samples form one capture group
    float64_below = 512  # up to this many samples the gram matrix is computed in float64

    def __init__(self, power: float = 0.75, unknown_quantile: float = 0.95) -> None:
        self.power = _positive(power, "power")
        q = _positive(unknown_quantile, "unknown_quantile")
        if q > 1.0:
            raise InvalidParameterError(f"unknown_quantile must be in (0, 1], got {unknown_quantile}")
        self.unknown_quantile = q
        self._classes: List[str] = []
        self._dim: Optional[int] = None
        self._set_samples(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
        self._init_neighbours(np.zeros((0, 0)))
        self._temperature = self.default_temperature
        self._open: Dict[str, float] = fit_open_set(np.zeros(0), np.zeros(0), None, self.unknown_quantile)

    # ------------------------------------------------------------------ properties
    def params(self) -> Dict[str, Any]:
        """Hyper-parameters (JSON-able); ``type(self)(**head.params())`` builds an equal head."""
        return {"power": self.power, "unknown_quantile": self.unknown_quantile}

    @property
    def classes(self) -> List[str]:
        """Class names; label i is ``classes[i]``."""
        return list(self._classes)

    @property
    def dim(self) -> Optional[int]:
        """Embedding length D (None until the first sample)."""
        return self._dim

    @property
    def n_samples(self) -> int:
        return int(self._y.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """Labels of the stored samples (N), in storage order (the ``index`` of ``remove``)."""
        return self._y.copy()

    @property
    def class_counts(self) -> np.ndarray:
        """Samples per class (C)."""
        return np.bincount(self._y, minlength=len(self._classes)).astype(np.int64)

    @property
    def temperature(self) -> float:
        return float(self._temperature)

    @property
    def unknown_threshold(self) -> float:
        """``predict`` returns -1 where ``unknown_score`` exceeds this (+inf: never)."""
        return float(self._open["threshold"])

    # ------------------------------------------------------------------ changes
    def fit(self, X, y, class_names: Optional[Sequence[str]] = None, views=None) -> "Head":
        """Replace all samples by X (NxD raw embeddings) with labels y (N ints in 0..C-1).

        ``class_names`` (C) defaults to "0".."max(y)"; a class without samples is kept but never
        predicted (probability 0). ``views``: optional extra views per sample (NxD or NxVxD).
        """
        X = as_embeddings(X)
        if X.shape[0] == 0:
            raise EmptyHeadError("cannot fit a head on no samples")
        if class_names is None:
            class_names = [str(i) for i in range(self._infer_class_count(y))]
        names = check_class_names(class_names)
        labels = self._check_labels(y, X.shape[0], len(names))
        Z = merge_views(X, views, self.power, X.shape[1]).astype(np.float32)
        return self._fit_points(Z, labels, names)

    def _fit_points(self, Z: np.ndarray, labels: np.ndarray, names: List[str], loader=None) -> "Head":
        """Install normalised points Z (NxD float32) with checked labels, then fit (or, with
        ``loader(G)``, restore) the model."""
        self._classes, self._dim = list(names), int(Z.shape[1])
        self._set_samples(Z, labels)
        G = self._gram()
        self._init_neighbours(G)
        (loader or self._fit_model)(G)
        self._refresh()
        return self

    @staticmethod
    def _infer_class_count(y) -> int:
        ya = np.asarray(y)
        if ya.size and np.issubdtype(ya.dtype, np.number) and ya.ndim == 1:
            return max(int(ya.max()) + 1, 1)
        return 1

    def add_class(self, name: str) -> int:
        """Append a class without samples; returns its label."""
        names = check_class_names(self._classes + [name])
        self._classes = names
        self._refresh()
        return len(names) - 1

    def add(self, x, label: int, views=None) -> int:
        """Absorb one sample x (D raw embedding) of class ``label``; returns its index."""
        if not self._classes:
            raise InvalidLabelError("the head has no classes: call fit() or add_class() first")
        X = as_embeddings(x, self._dim, allow_1d=True, name="x")
        if X.shape[0] != 1:
            raise InvalidEmbeddingError(f"add() takes one embedding, got {X.shape[0]}")
        lab = self._check_labels([label], 1, len(self._classes))
        v = None if views is None else np.asarray(views)[None]
        z = merge_views(X, v, self.power, X.shape[1]).astype(np.float32)
        if self._dim is None:
            self._dim = X.shape[1]
            self._Z = np.zeros((0, self._dim), np.float32)
        sims = self._sims(z)[:, 0]
        self._add_model(z[0].astype(np.float64), lab[0], sims)
        self._set_samples(np.vstack([self._Z, z]), np.concatenate([self._y, lab]) if self.n_samples else lab)
        self._neighbours_add(sims)
        self._refresh()
        return self.n_samples - 1

    def remove(self, index: int) -> None:
        """Forget the sample at ``index`` (0..N-1, storage order; later indices shift down)."""
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise SampleNotFoundError(f"sample index must be an integer, got {index!r}")
        i = int(index)
        if not 0 <= i < self.n_samples:
            raise SampleNotFoundError(f"no sample {index}: the head holds {self.n_samples}")
        self._remove_model(i)
        self._set_samples(np.delete(self._Z, i, axis=0), np.delete(self._y, i, axis=0))
        self._neighbours_remove(i)
        self._refresh()

    def remove_sample(self, x, label: int, views=None) -> int:
        """Forget the stored sample equal to x (D) with ``label``; returns the index it had."""
        X = as_embeddings(x, self._dim, allow_1d=True, name="x")
        v = None if views is None else np.asarray(views)[None]
        z = merge_views(X, v, self.power, X.shape[1]).astype(np.float32)
        if self.n_samples == 0:
            raise SampleNotFoundError("the head holds no samples")
        lab = self._check_labels([label], 1, len(self._classes))[0]
        same = self._y == lab
        cand = np.flatnonzero(same.reshape(self.n_samples, -1).all(axis=1))
        if cand.size:
            d = np.abs(self._Z[cand] - z).max(axis=1)
            j = int(np.argmin(d))
            if d[j] <= 1e-6:
                self.remove(int(cand[j]))
                return int(cand[j])
        raise SampleNotFoundError(f"no stored sample of class {label} equals this embedding")

    # ------------------------------------------------------------------ queries
    def decision_function(self, X) -> np.ndarray:
        """Raw class scores (NxC) before calibration; classes without samples get -inf."""
        Zq, S = self._query(X)
        return self._masked(self._decision(Zq, S))

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated class probabilities (NxC) for raw embeddings X (NxD, or one D vector)."""
        Zq, S = self._query(X)
        return self._proba(self._decision(Zq, S))

    def unknown_score(self, X) -> np.ndarray:
        """Unknown score (N): larger means less like any stored class (see :mod:`.openset`)."""
        Zq, S = self._query(X)
        return self._unknown(S, self._proba(self._decision(Zq, S)))

    def predict(self, X) -> Tuple[np.ndarray, np.ndarray]:
        """(labels N with -1 for unknown, probabilities NxC) for raw embeddings X."""
        labels, P, _ = self.predict_detailed(X)
        return labels, P

    def predict_detailed(self, X) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels N, probabilities NxC, unknown scores N) from one pass over the samples.

        ``labels`` are -1 where the score exceeds :attr:`unknown_threshold`; each part equals
        what ``predict`` and ``unknown_score`` return.
        """
        Zq, S = self._query(X)
        P = self._proba(self._decision(Zq, S))
        score = self._unknown(S, P)
        labels = P.argmax(axis=1).astype(np.int64)
        labels[score > self._open["threshold"]] = -1
        return labels, P, score

    def loo_proba(self) -> np.ndarray:
        """Calibrated held-out probabilities (NxC) of the stored samples (each left out with
        its capture group): how the head does on frames it was not taught."""
        self._require_samples()
        return self._proba(self._loo_decision())

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        """(arrays for .npz, JSON-able metadata); :func:`load_head` rebuilds the head."""
        arrays = {"Z": self._Z.copy(), "y": self._y.copy()}
        arrays.update(self._model_arrays())
        meta = {"format": STATE_FORMAT, "head": self.name, "classes": self.classes, "dim": self._dim,
                "n_samples": self.n_samples, "params": self.params(), "temperature": self.temperature}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> "Head":
        """Rebuild a head from :meth:`to_state` output; raises :class:`StateError` if invalid."""
        try:
            if meta.get("format") != STATE_FORMAT or meta.get("head") != cls.name:
                raise StateError(f"state is format {meta.get('format')} of head {meta.get('head')!r}, "
                                 f"expected format {STATE_FORMAT} of {cls.name!r}")
            head = cls(**meta["params"])
            names = check_class_names(meta["classes"])
            Z, y, dim = np.asarray(arrays["Z"]), np.asarray(arrays["y"]), meta["dim"]
            if Z.ndim != 2 or (Z.shape[0] and Z.shape[1] != dim) or Z.shape[0] != meta["n_samples"]:
                raise StateError(f"stored samples have shape {Z.shape}, metadata says "
                                 f"{meta['n_samples']} x {dim}")
            if Z.shape[0]:
                as_embeddings(Z, dim, name="stored samples")
            y = head._check_labels(y, Z.shape[0], len(names))
        except StateError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"invalid head state: {exc}") from None

        def loader(G: np.ndarray) -> None:
            try:
                head._load_model(arrays, meta, G)
            except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as exc:
                raise StateError(f"invalid {cls.name} head state: {exc}") from None

        if Z.shape[0] == 0:
            head._classes, head._dim = names, (None if dim is None else int(dim))
            head._set_samples(np.zeros((0, dim or 0), np.float32), y)
            return head
        return head._fit_points(Z.astype(np.float32), y, names, loader)

    # ------------------------------------------------------------------ internals
    def _check_labels(self, y, n: int, n_classes: int) -> np.ndarray:
        """Labels of n samples as stored (N int64 here; multi-label heads store NxC)."""
        return as_labels(y, n, n_classes)

    def _set_samples(self, Z: np.ndarray, y: np.ndarray) -> None:
        self._Z, self._y = Z, y
        self._sq = np.einsum("ij,ij->i", Z, Z, dtype=np.float64) if Z.size else np.zeros(Z.shape[0])

    def _require_samples(self) -> None:
        if self.n_samples == 0:
            raise EmptyHeadError("the head holds no samples: fit() or add() first")

    def _gram(self) -> np.ndarray:
        """Inner products of the stored points (NxN): float64 up to ``float64_below`` samples,
        float32 above (halves the time of the largest product). Callers may overwrite it."""
        if self.n_samples <= self.float64_below:
            Z = self._Z.astype(np.float64)
            return Z @ Z.T
        return self._Z @ self._Z.T

    def _sims(self, Zq: np.ndarray) -> np.ndarray:
        """Inner products (N x Nq float64) of the stored points with query points Zq (Nq x D)."""
        if self.n_samples <= self.float64_below:
            return self._Z.astype(np.float64) @ Zq.astype(np.float64).T
        return (self._Z @ Zq.astype(np.float32).T).astype(np.float64)

    def _similarities(self, rows: np.ndarray, cols: Optional[np.ndarray] = None) -> np.ndarray:
        """Inner products (len(rows) x len(cols), all samples by default) of stored points."""
        S = self._sims(self._Z[rows]).T
        return S if cols is None else S[:, cols]

    def _query(self, X) -> Tuple[np.ndarray, np.ndarray]:
        self._require_samples()
        Xq = as_embeddings(X, self._dim, allow_1d=True)
        Zq = merge_views(Xq, None, self.power).astype(np.float32).astype(np.float64)
        return Zq, self._sims(Zq).T

    def _masked(self, F: np.ndarray) -> np.ndarray:
        inactive = self.class_counts == 0
        return np.where(inactive[None, :], -np.inf, F)

    def _proba(self, F: np.ndarray) -> np.ndarray:
        return softmax(self._masked(F) / self._temperature)

    def _unknown(self, S: np.ndarray, P: np.ndarray) -> np.ndarray:
        dist = 1.0 - S.max(axis=1)
        return open_set_score(dist, 1.0 - P.max(axis=1), self._open)

    def _init_neighbours(self, G: np.ndarray) -> None:
        self._held = HeldOut(self.n_neighbours, self.duplicate_distance)
        self._held.rebuild(G)

    def _neighbours_add(self, sims: np.ndarray) -> None:
        self._held.append(sims, self._similarities)

    def _neighbours_remove(self, i: int) -> None:
        """Update groups and neighbour lists after sample i was deleted (self._Z already shrunk)."""
        self._held.remove(i, self._similarities)

    def _held_out_distance(self) -> np.ndarray:
        """Distance (N) of each sample to the nearest sample outside its group (NaN: none)."""
        return np.where(self._held.idx[:, 0] >= 0, 1.0 - self._held.sim[:, 0], np.nan)

    def _doubt_is_meaningful(self) -> np.ndarray:
        """N bools: the sample's class has a sample outside the sample's capture group."""
        C = len(self._classes)
        key = self._held.groups * C + self._y
        _, inverse, count = np.unique(key, return_inverse=True, return_counts=True)
        return self.class_counts[self._y] > count[inverse.ravel()]

    def _refresh(self) -> None:
        """Re-solve the model, then refit temperature and unknown threshold on held-out scores."""
        n = self.n_samples
        if n == 0:
            self._temperature = self.default_temperature
            self._open = fit_open_set(np.zeros(0), np.zeros(0), None, self.unknown_quantile)
            self._empty_model()
            return
        self._update_solution()
        counts = self.class_counts
        active = np.flatnonzero(counts > 0)
        F = self._masked(self._loo_decision())
        cal = self._doubt_is_meaningful()
        previous, self._temperature = self._temperature, self.default_temperature
        if active.size >= 2 and cal.any():
            ymap = np.searchsorted(active, self._y[cal])
            self._temperature = fit_temperature(F[cal][:, active], ymap, self.default_temperature,
                                                self.temperature_prior_weight, t_init=previous)
        P = softmax(F / self._temperature)
        self._open = fit_open_set(self._held_out_distance(), 1.0 - P.max(axis=1), cal,
                                  self.unknown_quantile, 1.0 / self._held.sizes)

    # ------------------------------------------------------------------ hooks
    def _fit_model(self, G: np.ndarray) -> None:
        """Build the model from the stored samples; G is their gram matrix (NxN, float64 or
        float32, see ``_gram``), which the hook may overwrite."""

    def _add_model(self, z: np.ndarray, label, sims: np.ndarray) -> None:
        """Absorb point z (D) with ``label`` before it is appended; sims (N) = Z @ z."""

    def _remove_model(self, i: int) -> None:
        """Forget sample i before it is deleted from the store."""

    def _empty_model(self) -> None:
        """Reset after the last sample was removed."""

    def _update_solution(self) -> None:
        """Recompute whatever depends on labels and class count (called by every refresh)."""

    def _decision(self, Zq: np.ndarray, S: np.ndarray) -> np.ndarray:
        """Raw scores (Nq x C) for query points Zq (Nq x D) with similarities S (Nq x N)."""
        raise NotImplementedError

    def _loo_decision(self) -> np.ndarray:
        """Held-out raw scores (NxC) of the stored samples, each with its capture group left out."""
        raise NotImplementedError

    def _model_arrays(self) -> Dict[str, np.ndarray]:
        return {}

    def _load_model(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any], G: np.ndarray) -> None:
        self._fit_model(G)
