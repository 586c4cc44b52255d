"""Give freed large arrays back to the system at once (glibc), so the device's memory falls back
after a fit instead of staying at its peak.

    from edge_classifier.core import memory
    memory.release_large_frees()      # once, at start (the CLI's main does it)

glibc serves allocations above its mmap threshold with ``mmap`` and returns them to the system
on ``free``; but after such a block is freed it raises the threshold to that block's size (up to
32 MB), and from then on the head's m x m and N x D temporaries of the next fit come from the
heap, where freed memory stays with the process. Fixing the threshold (``mallopt``, as the
``MALLOC_MMAP_THRESHOLD_`` environment variable would) at 4 MiB keeps those returnable; smaller
blocks (a camera frame, a fit's 1 MB chunks, the per-frame arrays) stay on the heap, whose top
is kept up to 32 MiB (``M_TRIM_THRESHOLD``) so that chunks freed and taken again in a loop are
not handed back and faulted in each time. Measured with ``tools/bench_memory.py``: 6-11 MiB
less at the peak of a fit or a background refit at 2,000 and 10,000 samples. The price is the
page faults of fresh blocks (~0.25 ms a MB) where a warm process would have reused its heap: a
load of a saved head in a process that has loaded one before (``tools/bench_heads.py``'s
repeated loads), not the device's one load at start. Elsewhere than glibc (musl, macOS) this
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["release_large_frees"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
THRESHOLD = 4 << 20
TRIM = 32 << 20
_done = False


def release_large_frees(threshold: int = THRESHOLD, trim: int = TRIM) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes and its trim threshold at ``trim``;
    True if it was set (once a process)."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, int(threshold))) and \
        bool(mallopt(M_TRIM_THRESHOLD, int(trim)))
    return _done
