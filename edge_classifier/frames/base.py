"""The frame source interface: ``read()`` HxWx3 uint8 RGB frames, paced, closable::

    class Still(FrameSource):
        def _read(self):
            return picture.copy()

    with Still(fps=2, clock=clock) as source:
        frame = source.read()                 # at most two frames a second, on ``clock``

    Still(crop=(0.5, 0.0, 1.0, 1.0)).read()   # only the right half of each picture

:class:`~edge_classifier.frames.sources.ReplaySource` and
:class:`~edge_classifier.frames.camera.PicameraSource` are the two real ones.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from edge_classifier.core.clock import SYSTEM_CLOCK, Clock
from edge_classifier.errors import EndOfStream, SourceClosedError
from edge_classifier.frames.region import Crop, check_crop, crop_frame


class FrameSource:
    """Base class: ``read()`` the next HxWx3 uint8 RGB frame; ``close()``; context manager.

    ``fps`` > 0 caps the frame rate: ``read()`` sleeps on ``clock`` so that successive frames
    are at least ``1 / fps`` seconds apart (the first frame is returned at once).

    ``crop``: the region of interest ``(x0, y0, x1, y1)`` in fractions of the frame
    (:mod:`~edge_classifier.frames.region`); ``read()`` returns only that region. A source
    whose hardware crops (the camera's ISP) sets ``self.crop_applied`` and returns it as is.
    """

    def __init__(self, fps: float = 0.0, clock: Optional[Clock] = None,
                 crop: Optional[Crop] = None):
        self.crop = check_crop(crop)
        self.crop_applied = False  # True: _read() already returns the region
        fps = float(fps)
        if fps < 0:
            raise ValueError(f"fps must be 0 (no cap) or more, not {fps!r}")
        self.fps = fps
        self.clock = clock or SYSTEM_CLOCK
        self.frames_read = 0
        self._last_frame_at: Optional[float] = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def read(self) -> np.ndarray:
        """The next frame, HxWx3 uint8 RGB (a new array the caller may keep or modify)."""
        if self._closed:
            raise SourceClosedError(f"{type(self).__name__} is closed")
        self._check_more()
        self._pace()
        frame = self._read()
        self.frames_read += 1
        if self.crop is not None and not self.crop_applied:
            frame = np.ascontiguousarray(crop_frame(frame, self.crop))
        return frame

    def _pace(self) -> None:
        if self.fps <= 0:
            return
        if self._last_frame_at is not None:
            wait = self._last_frame_at + 1.0 / self.fps - self.clock.now()
            if wait > 0:
                self.clock.sleep(wait)
        self._last_frame_at = self.clock.now()

    def _check_more(self) -> None:
        """Raise EndOfStream before pacing when there is no next frame (replays)."""

    def _read(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the source. Safe to call twice."""
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        """Frames until :class:`EndOfStream` (forever for a camera or a looping replay)."""
        while True:
            try:
                yield self.read()
            except EndOfStream:
                return
