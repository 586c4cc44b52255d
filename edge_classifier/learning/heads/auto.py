"""The ``auto`` head: picks the head that is best for the data at hand.

Rule (from the TrashNet benchmark in the package docstring: the kernel head is the most
accurate from 5 shots per class to all ~1,770 samples, 0.92 vs 0.87 for linear heads with all of
them, within 0.02 of the best at 1 shot, well calibrated, and the best at flagging unknowns;
one head for every size also keeps predictions from jumping as samples arrive):

* up to ``max_kernel_samples`` stored samples (default 3000): :class:`.KernelHead` (RBF);
* above: :class:`.LeastSquaresHead`, whose memory and update cost do not grow with N (the
  kernel head's NxN factor would take 72 MB at 3,000 samples and O(N^3) time to refit).

The switch happens in ``fit`` and ``add`` (the stored points move to the new head, exactly) and
back in ``remove``. Every call is delegated to the chosen head (``.inner``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import STATE_FORMAT, Head, _positive
from edge_classifier.errors import InvalidParameterError, StateError
from .kernel import KernelHead
from .least_squares import LeastSquaresHead

__all__ = ["AutoHead", "choose_head"]


def choose_head(n_samples: int, max_kernel_samples: int = 3000) -> str:
    """Name of the head ``auto`` uses for ``n_samples`` stored samples."""
    return "kernel" if n_samples <= max_kernel_samples else "least_squares"


class AutoHead:
    """Delegates to a :class:`KernelHead` or a :class:`LeastSquaresHead` by the rule above."""

    name = "auto"

    def __init__(self, max_kernel_samples: int = 3000, power: float = 0.75, unknown_quantile: float = 0.95,
                 kernel: Optional[Dict[str, Any]] = None, least_squares: Optional[Dict[str, Any]] = None) -> None:
        if isinstance(max_kernel_samples, bool) or not isinstance(max_kernel_samples, (int, np.integer)) \
                or max_kernel_samples < 1:
            raise InvalidParameterError(f"max_kernel_samples must be a positive integer, got {max_kernel_samples!r}")
        self.max_kernel_samples = int(max_kernel_samples)
        self.power = _positive(power, "power")
        self.unknown_quantile = float(unknown_quantile)
        self._kernel_params = dict(kernel or {})
        self._ls_params = dict(least_squares or {})
        for key in ("power", "unknown_quantile"):
            if key in self._kernel_params or key in self._ls_params:
                raise InvalidParameterError(f"set {key} on the auto head, not on its inner heads")
        try:
            self._make("least_squares")
            self.inner: Head = self._make("kernel")
        except TypeError as exc:
            raise InvalidParameterError(f"bad inner head parameter: {exc}") from None

    def params(self) -> Dict[str, Any]:
        return {"max_kernel_samples": self.max_kernel_samples, "power": self.power,
                "unknown_quantile": self.unknown_quantile, "kernel": dict(self._kernel_params),
                "least_squares": dict(self._ls_params)}

    @property
    def chosen(self) -> str:
        """Name of the head in use."""
        return self.inner.name

    def _make(self, name: str) -> Head:
        common = {"power": self.power, "unknown_quantile": self.unknown_quantile}
        if name == "kernel":
            return KernelHead(**self._kernel_params, **common)
        return LeastSquaresHead(**self._ls_params, **common)

    def _follow_rule(self, n: int) -> None:
        want = choose_head(n, self.max_kernel_samples)
        if want != self.inner.name:
            old, new = self.inner, self._make(want)
            if old.n_samples:
                new._fit_points(old._Z, old._y, old.classes)
            else:
                new._classes, new._dim = old.classes, old.dim
            self.inner = new

    # -- delegated interface ------------------------------------------------------------------
    def fit(self, X, y, class_names: Optional[Sequence[str]] = None, views=None) -> "AutoHead":
        n = int(np.shape(X)[0]) if np.ndim(X) >= 1 else 0
        head = self._make(choose_head(n, self.max_kernel_samples))
        head.fit(X, y, class_names, views)
        self.inner = head
        return self

    def add(self, x, label: int, views=None) -> int:
        index = self.inner.add(x, label, views)
        self._follow_rule(self.inner.n_samples)
        return index

    def add_class(self, name: str) -> int:
        return self.inner.add_class(name)

    def remove(self, index: int) -> None:
        self.inner.remove(index)
        self._follow_rule(self.inner.n_samples)

    def remove_sample(self, x, label: int, views=None) -> int:
        index = self.inner.remove_sample(x, label, views)
        self._follow_rule(self.inner.n_samples)
        return index

    def decision_function(self, X) -> np.ndarray:
        return self.inner.decision_function(X)

    def predict_proba(self, X) -> np.ndarray:
        return self.inner.predict_proba(X)

    def predict(self, X) -> Tuple[np.ndarray, np.ndarray]:
        return self.inner.predict(X)

    def predict_detailed(self, X) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.inner.predict_detailed(X)

    def unknown_score(self, X) -> np.ndarray:
        return self.inner.unknown_score(X)

    def loo_proba(self) -> np.ndarray:
        return self.inner.loo_proba()

    @property
    def classes(self) -> List[str]:
        return self.inner.classes

    @property
    def dim(self) -> Optional[int]:
        return self.inner.dim

    @property
    def n_samples(self) -> int:
        return self.inner.n_samples

    @property
    def labels(self) -> np.ndarray:
        return self.inner.labels

    @property
    def class_counts(self) -> np.ndarray:
        return self.inner.class_counts

    @property
    def temperature(self) -> float:
        return self.inner.temperature

    @property
    def unknown_threshold(self) -> float:
        return self.inner.unknown_threshold

    # -- persistence --------------------------------------------------------------------------
    def to_state(self) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        arrays, inner_meta = self.inner.to_state()
        meta = {"format": STATE_FORMAT, "head": self.name, "classes": self.classes, "dim": self.dim,
                "n_samples": self.n_samples, "params": self.params(), "inner": inner_meta}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> "AutoHead":
        try:
            if meta.get("format") != STATE_FORMAT or meta.get("head") != cls.name:
                raise StateError(f"state is format {meta.get('format')} of head {meta.get('head')!r}, "
                                 f"expected format {STATE_FORMAT} of 'auto'")
            head = cls(**meta["params"])
            inner_meta = meta["inner"]
            inner_cls = {"kernel": KernelHead, "least_squares": LeastSquaresHead}[inner_meta["head"]]
        except StateError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"invalid auto head state: {exc}") from None
        head.inner = inner_cls.from_state(arrays, inner_meta)
        return head
