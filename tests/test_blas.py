"""BLAS threads: one for the device loop, every core while fitting."""

from __future__ import annotations

import os

from edge_classifier.core import blas


def test_set_and_restore_threads():
    before = blas.get_threads()
    assert before is not None  # NumPy's OpenBLAS is found and controllable
    try:
        blas.set_threads(1)
        assert blas.get_threads() == 1
        with blas.threads(None):
            assert blas.get_threads() == (os.cpu_count() or 1)
        assert blas.get_threads() == 1
    finally:
        blas.set_threads(before)


FREED = """
import sys, numpy as np
from edge_classifier.core import memory
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
if sys.argv[1] == "release":
    assert memory.release_large_frees() and memory.release_large_frees()  # once is enough
a = np.ones(3 << 20)  # 24 MB, mmapped; freed, glibc raises its mmap threshold to its size
del a
base = rss()
keep = [np.ones(2 << 20), np.ones(1000)]  # 16 MB, and a small block after it
del keep[0]
print(rss() - base)
"""


def test_freed_large_arrays_go_back_to_the_system_once_the_threshold_is_fixed():
    """The head's temporaries of a fit (m x m, N x D) stay with the process under glibc's
    dynamic mmap threshold; edge_classifier.core.memory (called by the CLI) fixes it."""
    import subprocess
    import sys
    kept = float(subprocess.run([sys.executable, "-c", FREED, "keep"], capture_output=True,
                                text=True, check=True).stdout)
    released = float(subprocess.run([sys.executable, "-c", FREED, "release"],
                                    capture_output=True, text=True, check=True).stdout)
    assert kept > 12 and released < 4, (kept, released)
