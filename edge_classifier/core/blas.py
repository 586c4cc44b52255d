"""How many threads NumPy's BLAS may use.

On a 2- or 4-core Pi the TFLite interpreter already uses every core; OpenBLAS worker threads
that busy-wait after each small matrix product (the head's per-frame scores) steal those cores
and can halve the frame rate. The device therefore runs BLAS on one thread and gives it every
core only while fitting a head, which is rare and benefits from them::

    set_threads(1)
    with threads(None):          # all cores, for the duration of a fit
        head.fit(...)

Works with the OpenBLAS NumPy ships (found among the loaded libraries, as threadpoolctl does);
elsewhere these are no-ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator, Optional, Tuple

import numpy  # noqa: F401  (loads the BLAS this module controls)

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")
_found: Optional[Tuple] = None


def _openblas():
    global _found
    if _found is None:
        _found = (None, None)
        try:
            with open("/proc/self/maps") as f:
                paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
        except OSError:
            paths = set()
        for path in sorted(paths):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            setter = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
            getter = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
            if setter is not None and getter is not None:
                setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
                _found = (setter, getter)
                break
    return _found


def get_threads() -> Optional[int]:
    """BLAS threads now, or None if the BLAS is not one we can control."""
    _, getter = _openblas()
    return int(getter()) if getter else None


def set_threads(n: Optional[int]) -> None:
    """Use ``n`` BLAS threads (None: every core)."""
    setter, _ = _openblas()
    if setter:
        setter(int(n or os.cpu_count() or 1))


@contextlib.contextmanager
def threads(n: Optional[int]) -> Iterator[None]:
    """Temporarily use ``n`` BLAS threads (None: every core)."""
    before = get_threads()
    set_threads(n)
    try:
        yield
    finally:
        if before is not None:
            set_threads(before)
