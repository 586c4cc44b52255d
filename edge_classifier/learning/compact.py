"""The store's in-memory form of a sample's views (kept compact, exact for quantised models).

    c = compact(views)      # CompactViews (uint8 indices + their values) or the array itself
    views = expand(c)       # the float32 VxD array, bit for bit
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["CompactViews", "compact", "expand"]


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
