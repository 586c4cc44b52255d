"""The store's in-memory form of a sample's views (kept compact, exact for quantised models).

    c = compact(views)      # CompactViews (uint8 indices + their values) or the array itself
    views = expand(c)       # the float32 VxD array, bit for bit
    rows = ViewRows([c, ...])   # many samples, expanded a few at a time: rows.take(slice(0, 256))
"""

from __future__ import annotations

import zlib
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["CompactViews", "Compactor", "ViewRows", "compact", "expand"]


class CompactViews:
    """One sample's views in memory as uint8 indices into its own sorted values (at most 256):
    exact for a quantised backbone, whose dequantised outputs take at most 256 values (2 KB
    for two 1,024-d views instead of 8 KB)::

        c = compact(views); np.array_equal(c.expand(), views)   # True
    """

    __slots__ = ("values", "index", "_crc")

    def __init__(self, values: np.ndarray, index: np.ndarray, crc: Optional[int] = None) -> None:
        self.values, self.index, self._crc = values, index, crc

    def checksum(self, values_crc: Optional[int] = None) -> int:
        """CRC-32 of the indices, started from the CRC of the values (``values_crc`` if known),
        computed once: a sample's in-memory form never changes (what a head saved beside the
        samples is checked against)."""
        if self._crc is None:
            start = zlib.crc32(np.ascontiguousarray(self.values)) if values_crc is None \
                else values_crc
            self._crc = zlib.crc32(np.ascontiguousarray(self.index), start)
        return self._crc

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.index.shape

    def expand(self) -> np.ndarray:
        return self.values[self.index]


def compact(views: np.ndarray):
    """The in-memory form of a sample's views (VxD float32): :class:`CompactViews` when they
    take at most 256 distinct values, else the array itself."""
    values, index = np.unique(views, return_inverse=True)
    if values.size > 256:
        return views
    return CompactViews(values.astype(np.float32), index.reshape(views.shape).astype(np.uint8))


class Compactor:
    """:func:`compact` for many samples of one backbone, sharing one table of values among
    them: a quantised backbone's dequantised outputs are the 256 float32 levels
    ``float32(k) * float32(scale)`` (an arithmetic progression), so once they are known from a
    sample, each later sample is only its uint8 indices (2 KB for two 1,024-d views instead of
    ~3 KB) and is compacted several times faster than by sorting. Anything else (a float
    model's outputs, or values off the levels) is compacted on its own, as :func:`compact`
    does; the result is exact either way::

        compactor = Compactor()
        packed = [compactor(v) for v in views]    # expand(packed[i]) == views[i], bit for bit
    """

    def __init__(self) -> None:
        self._levels: Optional[np.ndarray] = None
        self._step = np.float32(0)
        self._k0 = 0

    def __call__(self, views: np.ndarray):
        views = np.asarray(views)
        if self._levels is not None and views.dtype == np.float32:
            shared = self._on_levels(views)
            if shared is not None:
                return shared
        packed = compact(views)
        if self._levels is None and isinstance(packed, CompactViews):
            self._learn(packed.values)
            if self._levels is not None:  # the first sample shares the table too
                return self._on_levels(views) or packed
        return packed

    def _learn(self, values: np.ndarray) -> None:
        """Take the levels from one sample's distinct values, if they are such a progression."""
        pos, neg = values[values > 0], values[values < 0]
        step = pos.min() if pos.size else (-neg.max() if neg.size else None)
        if step is None or not np.isfinite(step):
            return
        step = np.float32(step)
        with np.errstate(over="ignore", invalid="ignore"):
            k = np.rint(values / step)
        if not np.all(np.abs(k) < 1 << 20):
            return
        if not np.array_equal(k.astype(np.float32) * step, values):
            return
        k0 = int(k.min())
        if int(k.max()) - k0 > 255:
            return
        self._levels = np.arange(k0, k0 + 256, dtype=np.float32) * step
        self._levels.setflags(write=False)  # shared by every sample that uses it
        self._step, self._k0 = step, k0
        self._levels_crc = zlib.crc32(self._levels)

    def _on_levels(self, views: np.ndarray) -> Optional[CompactViews]:
        with np.errstate(over="ignore", invalid="ignore"):
            k = np.rint(views / self._step)
            k -= np.float32(self._k0)
            if not (k.min() >= 0 and k.max() <= 255):  # NaN fails too
                return None
        index = np.ascontiguousarray(k, dtype=np.uint8)  # (views read in Fortran order too)
        if not np.array_equal(self._levels[index], views):
            return None
        # its checksum now, while its bytes are at hand (1 us; 22 ms for 10,000 at each save
        # and start otherwise, in a loop of Python)
        return CompactViews(self._levels, index, zlib.crc32(index, self._levels_crc))


def expand(item) -> np.ndarray:
    return item.expand() if isinstance(item, CompactViews) else item


class ViewRows:
    """Many samples' views (in the store's compact form) read as one N x V x D float32 matrix,
    a few rows at a time: a head fitted from it never holds every sample as float32 at once
    (82 MB at 10,000 samples of two 1,024-d views, beside the head being built). ``V`` is the
    fewest views any sample has (samples with more are cut to that many, as
    :meth:`SampleStore.samples_matrix` cuts them)::

        rows = ViewRows(items)            # items: CompactViews or VxD float32 arrays
        rows.take(slice(0, 256))          # 256 x V x D float32
        rows.take(np.array([3, 9]))       # 2 x V x D float32
    """

    def __init__(self, items: Sequence) -> None:
        self._items: List = list(items)
        self.views = min((it.shape[0] for it in self._items), default=1)
        self.dim = int(self._items[0].shape[1]) if self._items else 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> List:
        """The samples in their in-memory form (the list itself: not to be changed)."""
        return self._items

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (len(self._items), self.views, self.dim)

    def take(self, rows: Union[slice, np.ndarray]) -> np.ndarray:
        picked = self._items[rows] if isinstance(rows, slice) else \
            [self._items[int(i)] for i in np.asarray(rows).ravel()]
        out = np.empty((len(picked), self.views, self.dim), np.float32)
        for j, item in enumerate(picked):
            out[j] = expand(item)[:self.views]
        return out
