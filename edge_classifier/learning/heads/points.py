"""Where the ``auto`` head finds its samples' stored points: its own float16 buffer, or the
store's in-memory samples (nothing of its own but a list of references).

    pts = OwnPoints(Z16)                        # fit(X): the head keeps the points (2*D bytes each)
    pts = StorePoints(items, views=2, power=.75) # fit_rows: the store's samples, merged when read
    Z = pts.take(idx)                           # len x D float32, the same values either way
    snap = pts.frozen()                         # for another thread: later edits do not reach it

A sample's stored point is its merged views rounded to float16, whichever keeps it, so a head
built from the store and one built from the same matrix hold the same points bit for bit, and
removing a sample subtracts exactly what adding it added. With the store's samples, the head
adds no memory per sample beyond a reference (the store holds them anyway: 2 KB a sample for
two 1,024-d views of a quantised backbone, and the head's float16 copy was 2 KB more), and a
saved head does not repeat them: the Learner hands the store's samples back on load.
"""

from __future__ import annotations

from itertools import compress
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edge_classifier.errors import StateError
from edge_classifier.learning.compact import CompactViews, expand
from .preprocess import as_embeddings, merge_views, normalise, normalise_power

__all__ = ["OwnPoints", "StorePoints", "float16_values", "merged_points"]


def merged_points(items: Sequence, views: int, power: float, dim: int,
                  rounded: bool = True) -> np.ndarray:
    """Stored points (len x D float32, float16 values unless not ``rounded``) of samples
    given in the store's in-memory form (VxD views, the sample itself first; the first
    ``views`` are merged): :func:`.preprocess.merge_views` of them, bit for bit."""
    Z = _merged_on_levels(items, views, power, dim)
    if Z is None:
        Z = _merged(items, views, power, dim)
    return float16_values(Z) if rounded else Z


def float16_values(Z: np.ndarray) -> np.ndarray:
    """``Z.astype(float16).astype(float32)`` bit for bit (round to nearest, ties to even, float16
    subnormals included), in float32 and integer steps: four times faster than NumPy's float16
    conversion, the slowest step of reading the points otherwise. A new array."""
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    a = np.abs(Z)
    if not a.max(initial=0.0) < 65504.0:  # float16's overflow, NaN: NumPy's conversion
        with np.errstate(over="ignore"):
            return Z.astype(np.float16).astype(np.float32)
    u = Z.view(np.uint32)
    r = (u >> 13) & np.uint32(1)  # 13 of the 23 mantissa bits go: ties to the even one
    r += u
    r += np.uint32(0xFFF)
    r &= np.uint32(0xFFFFE000)
    out = r.view(np.float32)
    # below float16's normal range, steps of 2**-24 (zeros, 16 % of a ReLU backbone's values,
    # are exact already: left out, they would make this the slowest step)
    small = a < np.float32(2.0 ** -14)
    small &= a > 0
    if small.any():
        s = a[small] + np.float32(0.5)  # a float32 sum rounds to 2**-24 there, ties to even
        s -= np.float32(0.5)
        out[small] = np.copysign(s, Z[small])
    return out


#: The power of a shared table of levels, by the table's id (the table itself kept beside it).
_POWERED: Dict[Tuple[int, float], Tuple[np.ndarray, np.ndarray]] = {}


def _merged_on_levels(items: Sequence, views: int, power: float, dim: int) -> Optional[np.ndarray]:
    """The merged points of samples that all share one table of levels (a quantised backbone's,
    see :class:`~edge_classifier.learning.compact.Compactor`), from the table's power: 256
    powers rather than one per value, the same values (the power is taken value by value:
    sqrt, correctly rounded), then the steps of ``merge_views``. None for anything else."""
    if not items or power not in (0.5, 0.75, 1.0):
        return None
    first = items[0]
    if not isinstance(first, CompactViews):
        return None
    table = first.values
    for it in items:
        if not isinstance(it, CompactViews) or it.values is not table or \
                it.index.ndim != 2 or it.index.shape[0] < views or it.index.shape[1] != dim:
            return None
    key = (id(table), power)
    hit = _POWERED.get(key)
    if hit is None or hit[0] is not table:
        if len(_POWERED) > 8:
            _POWERED.clear()
        if table.dtype != np.float32 or table.ndim != 1 or not np.all(np.isfinite(table)):
            return None
        powered = normalise_power(table, power)
        hit = _POWERED[key] = (table, powered)
    A = np.take(hit[1], np.stack([it.index[:views] for it in items]))  # len x views x D: powered
    norm = np.sqrt(np.einsum("ijk,ijk->ij", A, A, dtype=np.float64)).astype(np.float32)
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    A *= inv[..., None]
    return A[:, 0] if views == 1 else normalise(A[:, 0] + A[:, 1:].sum(axis=1), 1.0)


def _merged(items: Sequence, views: int, power: float, dim: int) -> np.ndarray:
    """The merged points, each sample's first ``views`` views (all it has if it has fewer:
    a capture taken with fewer augmented views than the head was fitted with)."""
    expanded = [expand(item) for item in items]
    for v in expanded:
        if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] != dim:
            raise StateError(f"a stored sample has shape {v.shape}, expected views of {dim}")
    counts = np.array([min(views, v.shape[0]) for v in expanded], np.int64)
    Z = np.empty((len(items), dim), np.float32)
    for k in np.unique(counts):
        which = np.flatnonzero(counts == k)
        V = np.stack([expanded[j][:k] for j in which])
        X = as_embeddings(V[:, 0], dim)
        Z[which] = merge_views(X, V[:, 1:] if k > 1 else None, power, dim)
    return Z


class OwnPoints:
    """The points in a float16 buffer of the head's own (grows by a quarter; a removed
    sample's row is left as a hole until it next grows, so a snapshot's rows never change)."""

    kind = "own"

    def __init__(self, Z16: np.ndarray) -> None:
        self.buf = Z16
        self._n = Z16.shape[0]  # rows of buf written so far
        self._rows = np.arange(self._n)  # row of buf holding each sample

    def __len__(self) -> int:
        return int(self._rows.size)

    @property
    def nbytes(self) -> int:
        return int(self.buf.nbytes + self._rows.nbytes)

    def take(self, idx) -> np.ndarray:
        return self.buf[self._rows[idx]].astype(np.float32)

    def append(self, z16: np.ndarray, item=None) -> None:
        if self._n == self.buf.shape[0]:  # full: a new array, live rows only, 25 % to spare
            live = self._rows.size
            grown = np.zeros((live + max(16, live // 4), self.buf.shape[1]), np.float16)
            grown[:live] = self.buf[self._rows]
            self.buf, self._n, self._rows = grown, live, np.arange(live)
        self.buf[self._n] = z16  # a row no snapshot refers to
        self._rows = np.append(self._rows, self._n)
        self._n += 1

    def keep(self, mask: np.ndarray) -> None:
        self._rows = self._rows[mask]  # removed rows stay as they are (a snapshot may read them)

    def frozen(self) -> "OwnPoints":
        snap = OwnPoints.__new__(OwnPoints)
        snap.buf, snap._n, snap._rows = self.buf[:self._n], self._n, self._rows
        return snap

    def saved(self) -> np.ndarray:
        """The points to save (N x D float16): the buffer itself while it has no holes."""
        rows = self._rows
        if rows.size and rows[-1] == rows.size - 1:
            return self.buf[:rows.size]  # rows below _n are never written again
        return self.buf[rows]


class StorePoints:
    """The points as the store's samples (references, never copied), merged when read.
    ``items`` may be a function returning them, called when they are first needed (a
    read-only state reads its samples only then)."""

    kind = "store"

    def __init__(self, items: Union[List, Callable[[], List], None], views: int, power: float,
                 dim: int, n: Optional[int] = None) -> None:
        self._items = items if isinstance(items, list) or items is None or callable(items) \
            else list(items)
        self.views, self.power, self.dim = int(views), float(power), int(dim)
        self._n = len(self._items) if isinstance(self._items, list) else n

    def __len__(self) -> int:
        return int(self._n or 0)

    @property
    def nbytes(self) -> int:
        return 8 * len(self)  # the list's references; the samples are the store's

    def attach(self, items: Union[List, Callable[[], List]]) -> None:
        self._items = items

    def items(self) -> List:
        if self._items is None:
            raise StateError("the head's samples were not handed back from the store")
        if not isinstance(self._items, list):
            got = list(self._items())
            if len(got) != self._n:
                raise StateError(f"the store gave {len(got)} samples for a head of {self._n}")
            self._items = got
        return self._items

    def take(self, idx) -> np.ndarray:
        items = self.items()
        picked = items[idx] if isinstance(idx, slice) else \
            [items[int(i)] for i in np.asarray(idx).ravel()]
        return merged_points(picked, self.views, self.power, self.dim)

    def append(self, z16: np.ndarray, item) -> None:
        """Append a sample (its stored form ``item``, whose point is ``z16``)."""
        self.items().append(item)  # a snapshot's list keeps its length: it reads only its rows
        self._n += 1

    def keep(self, mask: np.ndarray) -> None:
        items = self.items()
        self._items = list(compress(items, mask))  # a new list: snapshots keep theirs
        self._n = len(self._items)

    def frozen(self) -> "StorePoints":
        snap = StorePoints(self.items(), self.views, self.power, self.dim)
        snap._n = len(self)
        return snap

    def saved(self) -> None:
        return None
