"""Frame sources: the camera, or a folder of images replayed as if it were one.

Every source returns HxWx3 uint8 RGB frames, one per :meth:`FrameSource.read`::

    with make_source(config.source, default_paths=[samples_dir]) as source:
        frame = source.read()            # the camera if there is one, else the replay

    with ReplaySource("photos/", fps=10, loop=False) as source:
        for frame in source:             # stops at EndOfStream
            ...

The camera itself, :class:`~edge_classifier.frames.camera.PicameraSource`, and the interface,
:class:`~edge_classifier.frames.base.FrameSource`, live in their own modules and are
re-exported here with the errors and the colour conversion, so callers need only this one.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from edge_classifier.core.clock import Clock
from edge_classifier.errors import (CameraError, EndOfStream, ImageError,  # noqa: F401
                                    NoImagesError, SourceClosedError, SourceError)
from edge_classifier.frames.base import FrameSource
from edge_classifier.frames.camera import PicameraSource
from edge_classifier.frames.colour import lores_to_rgb, yuv420_to_rgb  # noqa: F401  (re-exported)
from edge_classifier.frames.images import (DEFAULT_MAX_PIXELS, SizeHint, list_images, load_image,
                                           needed_short_side)

__all__ = ["CameraError", "EndOfStream", "FrameSource", "NoImagesError", "PicameraSource",
           "ReplaySource", "SourceClosedError", "SourceError", "lores_to_rgb", "make_source",
           "yuv420_to_rgb"]

_log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


# --- replay -------------------------------------------------------------------------------------
class ReplaySource(FrameSource):
    """Replay image files as frames, in order, looping by default::

        source = ReplaySource(["photos/", "extra/cat.jpg"], fps=5, clock=clock)

        # the device, which knows its model: frames decoded near the size they are used at
        source = ReplaySource("photos/", size_hint=backbone.input_size)

    ``paths_or_folders``: one path or a list; a folder contributes its images sorted by name
    (:func:`~edge_classifier.frames.images.list_images`). Each file is decoded once and kept (up to
    ``cache_bytes`` of decoded frames; files past that are decoded again on each visit). A file
    that cannot be decoded is skipped with one warning. Raises :class:`NoImagesError`, naming
    the path(s), when a path does not exist or no file at all can be read.

    ``size_hint``: the model's input (height, width), passed to
    :func:`~edge_classifier.frames.images.load_image`: big photos are decoded at a short side of
    twice that, not in full (None: full resolution). ``max_pixels``: files whose header promises
    more pixels are skipped like undecodable ones. ``crop``: only that region of each
    picture is returned (see :class:`~edge_classifier.frames.base.FrameSource`).
    """

    def __init__(self, paths_or_folders: Union[PathLike, Sequence[PathLike]], fps: float = 0.0,
                 loop: bool = True, clock: Optional[Clock] = None,
                 cache_bytes: int = 256 * 1024 * 1024, size_hint: SizeHint = None,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, crop=None):
        super().__init__(fps, clock, crop)
        if isinstance(paths_or_folders, (str, bytes, os.PathLike)):
            paths_or_folders = [paths_or_folders]
        self.paths = [os.fspath(p) for p in paths_or_folders]
        self.loop = bool(loop)
        self.cache_bytes = int(cache_bytes)
        needed_short_side(size_hint)  # a bad hint fails here, not on the first frame
        self.size_hint = size_hint
        self.max_pixels = max_pixels
        self.files = self._expand(self.paths)
        self._cache: Dict[int, np.ndarray] = {}
        self._cached_bytes = 0
        self._bad: set = set()
        self._index = 0
        self.skipped = 0
        # Find one readable image now, so a useless source fails at once, naming its paths.
        for i in range(len(self.files)):
            if self._frame(i) is not None:
                break
        else:
            raise NoImagesError(f"no readable image in {self._describe()}")

    def _describe(self) -> str:
        return ", ".join(repr(p) for p in self.paths) or "(no paths)"

    @staticmethod
    def _expand(paths: List[str]) -> List[str]:
        files: List[str] = []
        for path in paths:
            if os.path.isdir(path):
                files.extend(list_images(path))
            elif os.path.isfile(path):
                files.append(path)
            else:
                raise NoImagesError(f"{path!r}: no such file or folder to replay")
        return files

    def _frame(self, i: int) -> Optional[np.ndarray]:
        """Frame ``i`` from the cache or decoded now; None (warned once) if unreadable."""
        if i in self._bad:
            return None
        frame = self._cache.get(i)
        if frame is not None:
            return frame
        try:
            frame = load_image(self.files[i], size_hint=self.size_hint, max_pixels=self.max_pixels)
        except ImageError as exc:
            self._bad.add(i)
            self.skipped += 1
            _log.warning("skipping %s", exc)
            return None
        frame.setflags(write=False)
        if self._cached_bytes + frame.nbytes <= self.cache_bytes:
            self._cache[i] = frame
            self._cached_bytes += frame.nbytes
        return frame

    def _check_more(self) -> None:
        if not self.loop and self._index >= len(self.files):
            raise EndOfStream(f"replay of {self._describe()} finished")

    def _read(self) -> np.ndarray:
        tried = 0
        while True:
            if self._index >= len(self.files):
                if not self.loop:
                    raise EndOfStream(f"replay of {self._describe()} finished")
                self._index = 0
            i = self._index
            self._index += 1
            frame = self._frame(i)
            if frame is not None:
                return frame.copy()
            tried += 1
            if tried > len(self.files):  # files became unreadable after the first check
                raise NoImagesError(f"no readable image left in {self._describe()}")

    def close(self) -> None:
        super().close()
        self._cache.clear()
        self._cached_bytes = 0

    def __repr__(self) -> str:
        return (f"<ReplaySource {len(self.files)} files from {self._describe()} "
                f"loop={self.loop} fps={self.fps:g}>")


# --- the factory --------------------------------------------------------------------------------
def _split_paths(path: str) -> List[str]:
    return [p for p in path.split(os.pathsep) if p]


def make_source(source_config, default_paths: Optional[Sequence[PathLike]] = None,
                clock: Optional[Clock] = None,
                picamera2_factory: Optional[Callable[[], object]] = None,
                size_hint: SizeHint = None, resize: str = "crop") -> FrameSource:
    """The source a :class:`~edge_classifier.config.SourceConfig` asks for::

        source = make_source(config.source, default_paths=[samples],
                             size_hint=backbone.input_size, resize=backbone.resize)

    ``kind = "picamera2"``: the camera (errors are raised). ``"replay"``: ``path`` (a folder, an
    image, or several separated by ':'), else ``default_paths``. ``"auto"``: the camera if
    picamera2 imports and a camera opens, else the replay (logging why). ``size_hint``: the
    model's input (height, width), so a replay decodes big photos near that size (see
    :class:`ReplaySource`), and with ``source.width = height = 0`` the camera's lores stream
    is that size, cropped and scaled by the ISP as ``resize`` says (without a ``size_hint``
    it is 320x240). ``source.crop`` applies to every source's frames.
    """
    cfg = source_config
    replay_paths = _split_paths(cfg.path) if cfg.path else list(default_paths or [])
    crop = tuple(cfg.crop) or None

    def camera() -> PicameraSource:
        if cfg.width and cfg.height:
            return PicameraSource(cfg.width, cfg.height, picamera2_factory=picamera2_factory,
                                  timeout=cfg.timeout, fps=cfg.fps, clock=clock, crop=crop)
        if size_hint is None:
            return PicameraSource(320, 240, picamera2_factory=picamera2_factory,
                                  timeout=cfg.timeout, fps=cfg.fps, clock=clock, crop=crop)
        height, width = (size_hint, size_hint) if isinstance(size_hint, int) else size_hint
        return PicameraSource(width, height, picamera2_factory=picamera2_factory,
                              timeout=cfg.timeout, fps=cfg.fps, clock=clock, crop=crop,
                              resize=resize)

    def replay() -> ReplaySource:
        if not replay_paths:
            raise NoImagesError("nothing to replay: set source.path to a folder or image files")
        # A crop keeps part of each picture: decode at the hint's size over that part.
        hint = size_hint
        if crop is not None and hint is not None:
            sides = (hint, hint) if isinstance(hint, int) else hint
            share = min(crop[2] - crop[0], crop[3] - crop[1])
            hint = tuple(max(1, int(round(s / share))) for s in sides)
        return ReplaySource(replay_paths, fps=cfg.fps, loop=cfg.loop, clock=clock,
                            size_hint=hint, crop=crop)

    if cfg.kind == "picamera2":
        return camera()
    if cfg.kind == "replay":
        return replay()
    if cfg.kind != "auto":
        raise ValueError(f"source.kind must be auto, picamera2 or replay, not {cfg.kind!r}")
    try:
        return camera()
    except CameraError as exc:
        if not replay_paths:
            raise CameraError(f"{exc}; and there is nothing to replay instead "
                              f"(source.path is empty)") from exc
        _log.warning("no camera, replaying %s instead (%s)", ", ".join(map(str, replay_paths)),
                     exc)
        return replay()
