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
