"""The browser's camera as a frame source (``source.kind = "browser"``).

A page of the web studio that streams its webcam posts JPEG frames; the server decodes each and
hands it to :meth:`BrowserSource.feed`; the device loop reads them like any camera's::

    source = BrowserSource()                    # source.kind = "browser"
    source.feed(rgb)                            # the web server's thread, one per frame
    frame = source.read()                       # the loop: the newest frame fed

    source = BrowserSource(fallback=camera)     # the page's camera switch: browser frames
                                                # while they come, the device's own otherwise

Only the newest frame is kept (a slow loop skips frames, counted in ``skipped``; it never
falls behind). With no fallback, ``read()`` waits up to ``wait`` seconds and then raises
:class:`~edge_classifier.errors.NoFrameYet`, so the loop still applies its events while no
browser streams (``idle()``, if given, is called then: the web studio's uploads go on
without frames). With a fallback, browser frames are read while they keep coming; after
``patience`` seconds without one the fallback's frames are read again, until the next browser
frame.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

import numpy as np

from edge_classifier.errors import NoFrameYet
from edge_classifier.frames.sources import FrameSource


class BrowserSource(FrameSource):
    """Frames fed by the web server from a browser's camera; see the module docstring."""

    def __init__(self, fallback: Optional[FrameSource] = None, wait: float = 0.25,
                 patience: float = 2.0, idle: Optional[Callable[[], None]] = None):
        super().__init__()
        self.fallback = fallback
        self.idle = idle  # called (on the reader's thread) instead of a frame: NoFrameYet
        self.wait = float(wait)
        self.patience = max(1, round(float(patience) / self.wait))  # waits in a row
        self.fed = 0  # frames the browser sent
        self.skipped = 0  # fed frames replaced by a newer one before the loop read them
        self._frame: Optional[np.ndarray] = None
        self._idle = self.patience  # timed-out waits in a row; >= patience: not streaming
        self._cond = threading.Condition()

    @property
    def streaming(self) -> bool:
        """True while the browser's frames are the ones read."""
        with self._cond:
            return self._idle < self.patience

    def feed(self, rgb: np.ndarray) -> None:
        """Offer the newest frame from the browser (any thread)."""
        frame = np.asarray(rgb, dtype=np.uint8)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB frame, got {frame.shape}")
        with self._cond:
            if self._closed:
                return
            if self._frame is not None:
                self.skipped += 1
            self._frame = frame
            self._idle = 0
            self.fed += 1
            self._cond.notify_all()

    def _take(self) -> Optional[np.ndarray]:
        with self._cond:
            if self._frame is None and self._idle < self.patience:
                self._cond.wait(self.wait)
            frame, self._frame = self._frame, None
            if frame is None and not self._closed:
                self._idle += 1
            return frame

    def _read(self) -> np.ndarray:
        if self.fallback is None or self.streaming:
            frame = self._take()
            if frame is not None:
                return frame
            if self.fallback is None or self.streaming:  # a gap between browser frames
                if self.idle is not None:
                    self.idle()  # what waits for the next frame need not wait for this one
                raise NoFrameYet("no frame from the browser's camera yet")
        return self.fallback.read()

    def close(self) -> None:
        with self._cond:
            super().close()
            self._frame = None
            self._cond.notify_all()
        if self.fallback is not None:
            self.fallback.close()

    def __repr__(self) -> str:
        return f"<BrowserSource fed={self.fed} fallback={self.fallback!r}>"
