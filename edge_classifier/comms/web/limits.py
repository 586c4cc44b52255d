"""How fast the web may add samples: a held Capture button, or a script, cannot flood the store.

Captures are limited per class on the server, to what a held GPIO button records: at most
``gpio.hold_rate`` samples a second, with a burst of ``CAPTURE_BURST_SECONDS`` worth (a token
bucket on the device's clock). Uploads are bounded per request (``web.max_upload_*``) and at
most ``MAX_WAITING_UPLOADS`` wait to be imported::

    limit = CaptureLimit(rate=5.0, now=clock.now)
    limit.take("cat", 3)      # None: go ahead; else the one line saying why not
    limit.retry_after("cat", 3)                      # seconds until it would be taken
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from edge_classifier.core.names import class_key

CAPTURE_BURST_SECONDS = 2.0  # a full bucket holds this many seconds of captures
MAX_WAITING_UPLOADS = 4  # uploads queued for import (each at most web.max_upload_bytes)
MAX_BUCKETS = 256  # classes remembered; full buckets are forgotten first


class CaptureLimit:
    """At most ``rate`` samples a second per class; see the module docstring. A request for
    more than the bucket holds is taken when the bucket is full (the class then waits)."""

    def __init__(self, rate: float, now: Callable[[], float],
                 burst_seconds: float = CAPTURE_BURST_SECONDS):
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.now = now
        self._buckets: Dict[str, Tuple[float, float]] = {}  # class key -> (tokens, when)

    def _tokens(self, key: str, now: float) -> float:
        tokens, when = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + max(0.0, now - when) * self.rate)

    def retry_after(self, name: str, count: int = 1) -> float:
        """Seconds until ``count`` samples of ``name`` would be taken (0: now)."""
        need = min(float(count), self.capacity)
        return max(0.0, (need - self._tokens(class_key(name), self.now())) / self.rate)

    def take(self, name: str, count: int = 1) -> Optional[str]:
        """Take ``count`` samples of ``name`` from its bucket; None, or why not."""
        key, now = class_key(name), self.now()
        wait = self.retry_after(name, count)
        if wait > 0:
            return (f"too many captures of {name!r}: at most {self.rate:g} a second "
                    f"(gpio.hold_rate); try again in {wait:.1f} s")
        self._buckets[key] = (self._tokens(key, now) - count, now)
        if len(self._buckets) > MAX_BUCKETS:
            for k in [k for k in self._buckets if self._tokens(k, now) >= self.capacity]:
                del self._buckets[k]
        return None
