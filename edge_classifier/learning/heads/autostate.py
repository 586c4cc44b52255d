"""Saving and loading the ``auto`` head, and its kernel-head view for the exporter.

    arrays, meta = head_state(head)            # what AutoHead.to_state returns
    head = restore_head(AutoHead, arrays, meta)  # no fit: the solved system is in the state

The state holds the landmarks, their factor ``Linv`` (float32 when that is exact: it is
computed in float32 above 512 landmarks), the system ``P``, ``b``, ``s``, its solution ``H``,
``GA``, the stored points (float16; not for a head that reads them from the store: the
Learner hands its samples back with ``attach_points``) with their landmark map, the labels,
the temperature and the unknown-score parameters. Loading checks every shape and value with single passes that
allocate nothing of the arrays' size, copies nothing np.load already gave it, and rebuilds
only ``alpha`` (O(m C)); a state without ``H``/``GA`` (saved by an older version) is solved
once (O(m^2 C)).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from .base import STATE_FORMAT, _positive
from edge_classifier.errors import StateError
from .lowrank import PendingMatrix
from .points import OwnPoints, StorePoints
from .preprocess import as_labels, check_class_names

__all__ = ["KernelForm", "head_state", "restore_head"]


def head_state(self, copy: bool = True, frozen: bool = False
               ) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """(arrays, metadata) of an :class:`.auto.AutoHead`: everything a prediction needs. With
    ``copy=False`` the arrays are the head's own, valid until its next edit (a save that
    writes them at once: no copy of the head beside it, 16 MB at 1,024 landmarks). With
    ``frozen=True`` too they stay valid through later edits (a save written by another
    thread while the head goes on learning): edits replace those arrays rather than change
    them, except ``H`` and ``GA`` (m x (C+1), copied here), the own points (copied) and ``P``,
    which the head copies before it next changes it in place (only if that comes first)."""
    Linv32 = self._Linv.astype(np.float32, copy=False)  # (the head's own when it is float32)
    exact32 = Linv32 is self._Linv or np.array_equal(Linv32, self._Linv)  # then float32 loses
    # nothing (half the bytes)
    arrays = {"L": self._L, "owner": self._owner, "Linv": Linv32 if exact32 else self._Linv,
              "P": self._P, "b": self._b, "s": self._s, "H": self._H, "GA": self._GA,
              "points": None, "land": self._land, "y": self._y}
    if frozen:
        arrays["H"], arrays["GA"] = np.array(self._H), np.array(self._GA)
        self._Pm.share()  # P itself: copied by the head before its next in-place change
    arrays = {k: (np.array(v) if copy else np.asarray(v)) for k, v in arrays.items()
              if v is not None}
    points = self._pts.saved()  # None: the store's samples (handed back on load)
    if points is not None:  # the buffer itself while it has no holes, no copy (unless frozen)
        arrays["points"] = np.array(points) if frozen and not copy else points
    meta = {"format": STATE_FORMAT, "head": self.name, "classes": self.classes,
            "dim": self._dim, "n_samples": self.n_samples, "params": self.params(),
            "temperature": self.temperature, "open": dict(self._open),
            "calibration_stale": self._stale}
    if points is None:
        meta["points"] = {"from": "store", "views": self._pts.views}
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
        source = meta.get("points")  # the store's samples, handed back by attach_points
        if source is not None and (not isinstance(source, dict) or source.get("from") != "store"
                                   or not isinstance(source.get("views"), int)
                                   or isinstance(source.get("views"), bool)
                                   or source["views"] < 1):
            raise StateError(f"saved points source {source!r} is not understood")
        keys = ("L", "owner", "Linv", "P", "b", "s", "land", "y")
        get = {k: np.asarray(arrays[k]) for k in keys + (() if source else ("points",))}
        solved = "H" in arrays and "GA" in arrays
        if solved:
            get["H"], get["GA"] = np.asarray(arrays["H"]), np.asarray(arrays["GA"])
        m = get["L"].shape[0]
        shapes = {"L": (m, dim), "owner": (m,), "Linv": (m, m), "P": (m, m), "b": (m, C),
                  "s": (m,), "points": (n, dim), "land": (n,), "y": (n,),
                  "H": (m, C + 1), "GA": (m, C + 1)}
        for key, shape in shapes.items():
            if n and key in get and get[key].shape != shape:
                raise StateError(f"saved {key} has shape {get[key].shape}, expected {shape}")
        if n == 0:
            head._classes, head._dim = names, (None if dim is None else int(dim))
            head._reset(head._dim or 0)
            head._b = np.zeros((0, C))
            return head
        y = as_labels(get["y"], n, C)
        for key in ("L", "Linv", "P", "b", "s") + (() if source else ("points",)) + \
                (("H", "GA") if solved else ()):
            if not _all_finite(get[key]):
                raise StateError(f"saved {key} holds NaN or infinity")
        land, owner = get["land"].astype(np.int64), get["owner"].astype(np.int64)
        if land.max() >= m or land.min() < -1 or owner.max() >= n or m > head.landmarks:
            raise StateError("saved landmark indices are out of range")
        head._classes, head._dim = names, int(dim)
        head._reset(head._dim)
        head._L = _owned(get["L"], np.float32)
        head._lsq = np.einsum("ij,ij->i", head._L, head._L, dtype=np.float64)
        head._owner, head._land, head._y = owner, land, y
        P = _owned(get["P"], np.float64)
        Linv = get["Linv"]  # float32 as saved when that was exact (and is kept so: 4 MB less)
        head._Linv = _owned(Linv, np.float32 if Linv.dtype == np.float32 else np.float64)
        head._Pm = PendingMatrix(P, P is get["P"])
        head._b, head._s = _owned(get["b"], np.float64), _owned(get["s"], np.float64)
        head._pts = StorePoints(None, source["views"], head.power, head._dim, n) if source \
            else OwnPoints(_owned(get["points"], np.float16))
        head._temperature = _positive(meta["temperature"], "temperature")
        head._open = {k: float(meta["open"][k]) for k in
                      ("dist_loc", "dist_scale", "doubt_loc", "doubt_scale", "threshold")}
        head._stale = bool(meta.get("calibration_stale", False))
    except StateError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise StateError(f"invalid auto head state: {exc}") from None
    if solved:  # the saved solution: exactly what the saving head predicted with
        head._H, head._GA = _owned(get["H"], np.float64), _owned(get["GA"], np.float64)
        head._alpha_from_solution()
    else:
        head._solve()
    return head


def _owned(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` as a writable C-contiguous array of ``dtype``: no copy when np.load gave one."""
    return np.require(a, dtype, ["C", "W"])


def _all_finite(a: np.ndarray, chunk: int = 1 << 16) -> bool:
    """No NaN or infinity in ``a``, without a boolean temporary of its size: a float16 value is
    not finite when all its exponent bits are set (checked in chunks on its bits); a float32 or
    float64 array's sum is finite only if every value is (an overflowing sum of finite values
    would need entries near the dtype's maximum, which no valid state holds)."""
    if a.dtype == np.float16:
        bits = np.ascontiguousarray(a).view(np.uint16).ravel()
        buf = np.empty(min(chunk, bits.size), np.uint16)
        for start in range(0, bits.size, chunk):
            part = bits[start:start + chunk]
            out = np.bitwise_and(part, 0x7C00, out=buf[:part.size])
            if out.size and out.max() == 0x7C00:
                return False
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(a, axis=None, dtype=np.float64)))


class KernelForm:
    """An :class:`AutoHead` seen as a kernel head on its landmarks (what the exporter reads)."""

    name = "kernel"
    kernel = "rbf"

    def __init__(self, head) -> None:
        self._head = head

    def __getattr__(self, attr: str):
        mapped = {"_Z": "_L", "_alpha": "_alpha"}.get(attr, attr)
        return getattr(self._head, mapped)
