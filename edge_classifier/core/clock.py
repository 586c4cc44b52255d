"""Clocks: the real one, and a fake one that tests advance by hand instead of sleeping.

::

    clock = FakeClock()
    clock.sleep(2.5)        # returns at once, time moves on
    clock.now()             # 2.5
"""

from __future__ import annotations

import threading
import time


class Clock:
    """Monotonic seconds and sleeping; wall time for timestamps."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock(Clock):
    """A clock that only moves when told to (``advance``) or when something sleeps on it."""

    def __init__(self, start: float = 0.0, wall_start: float = 1_700_000_000.0):
        self._now = start
        self._wall_offset = wall_start - start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def wall(self) -> float:
        with self._lock:
            return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


SYSTEM_CLOCK = Clock()
