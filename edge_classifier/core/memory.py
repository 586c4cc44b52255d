"""Give freed large arrays back to the system at once (glibc), so the device's memory falls back
after a fit instead of staying at its peak.

    from edge_classifier.core import memory
    memory.release_large_frees()      # once, at start (the CLI's main does it)

glibc serves allocations above its mmap threshold with ``mmap`` and returns them to the system
on ``free``; but after such a block is freed it raises the threshold to that block's size (up to
32 MB), and from then on the head's m x m and N x D temporaries of the next fit come from the
heap, where freed memory stays with the process. Fixing the threshold (``mallopt``, as the
``MALLOC_MMAP_THRESHOLD_`` environment variable would) keeps every block of 1 MiB or more
returnable; smaller ones (a camera frame, a head's per-frame arrays) stay on the heap. Measured
with ``tools/bench_memory.py``: 9-11 MiB less at the peak of a fit or a background refit at
2,000 and 10,000 samples, and a process that ends its fit ~19 MiB smaller. Elsewhere than glibc
(musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["release_large_frees"]

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD = 1 << 20
_done = False


def release_large_frees(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True if it was set (once a process)."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
    return _done
