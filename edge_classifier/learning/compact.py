"""The store's in-memory form of a sample's views (kept compact, exact for quantised models).

    c = compact(views)      # CompactViews (uint8 indices + their values) or the array itself
    views = expand(c)       # the float32 VxD array, bit for bit
    rows = ViewRows([c, ...])   # many samples, expanded a few at a time: rows.take(slice(0, 256))
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np

__all__ = ["CompactViews", "ViewRows", "compact", "expand"]


class CompactViews:
    """One sample's views in memory as uint8 indices into its own sorted values (at most 256):
    exact for a quantised backbone, whose dequantised outputs take at most 256 values (2 KB
    for two 1,024-d views instead of 8 KB)::

        c = compact(views); np.array_equal(c.expand(), views)   # True
    """

    __slots__ = ("values", "index")

    def __init__(self, values: np.ndarray, index: np.ndarray) -> None:
        self.values, self.index = values, index

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
    def shape(self) -> Tuple[int, int, int]:
        return (len(self._items), self.views, self.dim)

    def take(self, rows: Union[slice, np.ndarray]) -> np.ndarray:
        picked = self._items[rows] if isinstance(rows, slice) else \
            [self._items[int(i)] for i in np.asarray(rows).ravel()]
        out = np.empty((len(picked), self.views, self.dim), np.float32)
        for j, item in enumerate(picked):
            out[j] = expand(item)[:self.views]
        return out
