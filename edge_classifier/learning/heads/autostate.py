"""Saving and loading the ``auto`` head, and its kernel-head view for the exporter.

    arrays, meta = head_state(head)            # what AutoHead.to_state returns
    head = restore_head(AutoHead, arrays, meta)  # no fit: the solved system is in the state

The state holds the landmarks, their factor ``Linv``, the system ``P``, ``b``, ``s``, the stored
points (float16) with their landmark map, the labels, the temperature and the unknown-score
parameters; loading checks every shape and value and rebuilds only ``alpha`` (O(m^2 C)).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from .base import STATE_FORMAT, _positive
from edge_classifier.errors import StateError
from .preprocess import as_labels, check_class_names

__all__ = ["KernelForm", "head_state", "restore_head"]


def head_state(self) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """(arrays, metadata) of an :class:`.auto.AutoHead`: everything a prediction needs."""
    arrays = {"L": self._L, "owner": self._owner, "Linv": self._Linv, "P": self._P,
              "b": self._b, "s": self._s, "points": self._buf[:self._n], "land": self._land,
              "y": self._y}
    arrays = {k: np.array(v) for k, v in arrays.items()}
    meta = {"format": STATE_FORMAT, "head": self.name, "classes": self.classes,
            "dim": self._dim, "n_samples": self.n_samples, "params": self.params(),
            "temperature": self.temperature, "open": dict(self._open),
            "calibration_stale": self._stale}
    return arrays, meta


def restore_head(cls, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]):
    """An ``cls`` (:class:`.auto.AutoHead`) from :func:`head_state` output, without a fit."""
    try:
        if meta.get("format") != STATE_FORMAT or meta.get("head") != cls.name:
            raise StateError(f"state is format {meta.get('format')} of head {meta.get('head')!r}, "
                             f"expected format {STATE_FORMAT} of 'auto'")
        head = cls(**meta["params"])
        names = check_class_names(meta["classes"])
        n, dim, C = int(meta["n_samples"]), meta["dim"], len(names)
        get = {k: np.asarray(arrays[k]) for k in
               ("L", "owner", "Linv", "P", "b", "s", "points", "land", "y")}
        m = get["L"].shape[0]
        shapes = {"L": (m, dim), "owner": (m,), "Linv": (m, m), "P": (m, m), "b": (m, C),
                  "s": (m,), "points": (n, dim), "land": (n,), "y": (n,)}
        for key, shape in shapes.items():
            if n and get[key].shape != shape:
                raise StateError(f"saved {key} has shape {get[key].shape}, expected {shape}")
        if n == 0:
            head._classes, head._dim = names, (None if dim is None else int(dim))
            head._reset(head._dim or 0)
            head._b = np.zeros((0, C))
            return head
        y = as_labels(get["y"], n, C)
        for key in ("L", "Linv", "P", "b", "s", "points"):
            if not np.all(np.isfinite(get[key])):
                raise StateError(f"saved {key} holds NaN or infinity")
        land, owner = get["land"].astype(np.int64), get["owner"].astype(np.int64)
        if land.max() >= m or land.min() < -1 or owner.max() >= n or m > head.landmarks:
            raise StateError("saved landmark indices are out of range")
        head._classes, head._dim = names, int(dim)
        head._reset(head._dim)
        head._L = get["L"].astype(np.float32)
        head._lsq = np.einsum("ij,ij->i", head._L, head._L, dtype=np.float64)
        head._owner, head._land, head._y = owner, land, y
        head._Linv, head._P = get["Linv"].astype(np.float64), get["P"].astype(np.float64)
        head._b, head._s = get["b"].astype(np.float64), get["s"].astype(np.float64)
        head._buf, head._n = get["points"].astype(np.float16), n
        head._temperature = _positive(meta["temperature"], "temperature")
        head._open = {k: float(meta["open"][k]) for k in
                      ("dist_loc", "dist_scale", "doubt_loc", "doubt_scale", "threshold")}
        head._stale = bool(meta.get("calibration_stale", False))
    except StateError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise StateError(f"invalid auto head state: {exc}") from None
    head._solve()
    return head


class KernelForm:
    """An :class:`AutoHead` seen as a kernel head on its landmarks (what the exporter reads)."""

    name = "kernel"
    kernel = "rbf"

    def __init__(self, head) -> None:
        self._head = head

    def __getattr__(self, attr: str):
        mapped = {"_Z": "_L", "_alpha": "_alpha"}.get(attr, attr)
        return getattr(self._head, mapped)
