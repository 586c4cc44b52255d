"""Frame sources: the camera, or a folder of images replayed as if it were one.

Every source returns HxWx3 uint8 RGB frames, one per :meth:`FrameSource.read`::

    with make_source(config.source, default_paths=[samples_dir]) as source:
        frame = source.read()            # the camera if there is one, else the replay

    with ReplaySource("photos/", fps=10, loop=False) as source:
        for frame in source:             # stops at EndOfStream
            ...

:class:`PicameraSource` wiring: a Raspberry Pi camera module on the CSI connector (the ribbon
cable's contacts facing the connector's). Only picamera2's small "lores" stream is read: RGB888
on a Pi 5, YUV420 (I420) on a Pi 4 and older, converted with NumPy (:func:`lores_to_rgb`).

picamera2 is imported only inside :class:`PicameraSource`, so this module imports anywhere.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edge_classifier.core.clock import SYSTEM_CLOCK, Clock
from edge_classifier.frames.colour import lores_to_rgb, yuv420_to_rgb  # noqa: F401  (re-exported)
from edge_classifier.errors import (CameraError, EndOfStream, ImageError, NoImagesError,  # noqa: F401
                     SourceClosedError, SourceError)
from edge_classifier.frames.images import list_images, load_image

__all__ = ["CameraError", "EndOfStream", "FrameSource", "NoImagesError", "PicameraSource",
           "ReplaySource", "SourceClosedError", "SourceError", "lores_to_rgb", "make_source",
           "yuv420_to_rgb"]

_log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


# --- errors -------------------------------------------------------------------------------------
class FrameSource:
    """Base class: ``read()`` the next HxWx3 uint8 RGB frame; ``close()``; context manager.

    ``fps`` > 0 caps the frame rate: ``read()`` sleeps on ``clock`` so that successive frames
    are at least ``1 / fps`` seconds apart (the first frame is returned at once).
    """

    def __init__(self, fps: float = 0.0, clock: Optional[Clock] = None):
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


# --- replay -------------------------------------------------------------------------------------
class ReplaySource(FrameSource):
    """Replay image files as frames, in order, looping by default::

        source = ReplaySource(["photos/", "extra/cat.jpg"], fps=5, clock=clock)

    ``paths_or_folders``: one path or a list; a folder contributes its images sorted by name
    (:func:`~edge_classifier.frames.images.list_images`). Each file is decoded once and kept (up to
    ``cache_bytes`` of decoded frames; files past that are decoded again on each visit). A file
    that cannot be decoded is skipped with one warning. Raises :class:`NoImagesError`, naming
    the path(s), when a path does not exist or no file at all can be read.
    """

    def __init__(self, paths_or_folders: Union[PathLike, Sequence[PathLike]], fps: float = 0.0,
                 loop: bool = True, clock: Optional[Clock] = None,
                 cache_bytes: int = 256 * 1024 * 1024):
        super().__init__(fps, clock)
        if isinstance(paths_or_folders, (str, bytes, os.PathLike)):
            paths_or_folders = [paths_or_folders]
        self.paths = [os.fspath(p) for p in paths_or_folders]
        self.loop = bool(loop)
        self.cache_bytes = int(cache_bytes)
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
            frame = load_image(self.files[i])
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


# --- colour conversion --------------------------------------------------------------------------
#: (Kr, Kb) luma coefficients of each YCbCr matrix.
_INSTALL_HINT = ("on Raspberry Pi OS install it with `sudo apt install python3-picamera2` and "
                 "create the virtual environment with `python3 -m venv --system-site-packages` "
                 "so it can see it; or set source.kind = \"replay\"")
_CAMERA_HINT = ("check that the ribbon cable is seated (contacts facing the connector's), that "
                "`rpicam-hello --list-cameras` lists the camera, and that no other program "
                "(rpicam-*, libcamera, another edge-classifier) is using it")


def _import_picamera2() -> Callable[[], object]:
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise CameraError(f"picamera2 is not available ({exc}): {_INSTALL_HINT}") from exc
    except Exception as exc:  # e.g. libcamera present but broken
        raise CameraError(f"picamera2 cannot be loaded ({type(exc).__name__}: {exc}): "
                          f"{_INSTALL_HINT}") from exc
    return Picamera2


def _is_pisp(camera) -> bool:
    """True on a Pi 5 (PiSP back end), where the lores stream may be RGB."""
    platform = getattr(camera, "platform", None)
    name = getattr(platform, "name", platform)
    return "PISP" in str(name).upper()


class PicameraSource(FrameSource):
    """Frames from a Raspberry Pi camera through picamera2's small "lores" stream::

        with PicameraSource(320, 240) as camera:
            frame = camera.read()                 # 240x320x3 RGB

    The lores stream is ``RGB888`` on a Pi 5 and ``YUV420`` on older Pis (where it must be
    YUV); the format the camera reports after ``configure`` decides the conversion. ``read()``
    does one ``capture_array("lores")``; no frame within ``timeout`` seconds raises
    :class:`CameraError` (the camera is hung). ``picamera2_factory`` replaces the
    ``Picamera2`` class (tests); every failure to open raises :class:`CameraError` saying what
    to check.
    """

    def __init__(self, width: int = 320, height: int = 240,
                 picamera2_factory: Optional[Callable[[], object]] = None,
                 timeout: float = 10.0, fps: float = 0.0, clock: Optional[Clock] = None):
        super().__init__(fps, clock)
        width, height = int(width), int(height)
        if width < 2 or height < 2:
            raise ValueError(f"lores size must be at least 2x2, not {width}x{height}")
        self.timeout = float(timeout)
        factory = picamera2_factory or _import_picamera2()
        try:
            self._camera = factory()
        except Exception as exc:
            raise CameraError(f"cannot open the camera ({type(exc).__name__}: {exc}): "
                              f"{_CAMERA_HINT}") from exc
        try:
            self._start(width - width % 2, height - height % 2)
        except BaseException:
            self._shutdown()
            raise

    def _configure(self, size: Tuple[int, int], fmt: str) -> None:
        main = (max(640, size[0]), max(480, size[1]))
        config = self._camera.create_preview_configuration(
            main={"size": main}, lores={"size": size, "format": fmt})
        self._camera.configure(config)

    def _start(self, width: int, height: int) -> None:
        wanted = "RGB888" if _is_pisp(self._camera) else "YUV420"
        try:
            try:
                self._configure((width, height), wanted)
            except Exception:
                if wanted == "YUV420":
                    raise
                _log.info("lores stream refused %s; trying YUV420", wanted)
                self._configure((width, height), "YUV420")
            config = self._camera.camera_config
            lores = config["lores"]
            self.format = str(lores["format"])
            self.size = tuple(int(v) for v in lores["size"])
            self._colour_space = config.get("colour_space")
            self._camera.start()
        except Exception as exc:
            raise CameraError(f"cannot configure or start the camera ({type(exc).__name__}: "
                              f"{exc}): {_CAMERA_HINT}") from exc
        if self.format not in ("YUV420", "YVU420", "RGB888", "BGR888", "XRGB8888", "XBGR8888"):
            raise CameraError(f"the camera gave lores format {self.format!r}, which "
                              f"edge-classifier cannot convert")
        _log.info("camera lores stream: %dx%d %s", self.size[0], self.size[1], self.format)

    def _read(self) -> np.ndarray:
        try:
            array = self._camera.capture_array("lores", wait=self.timeout)
        except (TimeoutError, concurrent.futures.TimeoutError) as exc:
            raise CameraError(f"no frame from the camera for {self.timeout:g} s: it is hung "
                              f"or disconnected; {_CAMERA_HINT}") from exc
        except Exception as exc:
            raise CameraError(f"capturing a frame failed ({type(exc).__name__}: {exc})") from exc
        return lores_to_rgb(array, self.format, self.size[0], self._colour_space)

    def _shutdown(self) -> None:
        camera, self._camera = getattr(self, "_camera", None), None
        if camera is None:
            return
        for step in ("stop", "close"):
            try:
                getattr(camera, step)()
            except Exception as exc:  # closing must not fail
                _log.debug("camera %s failed: %s", step, exc)

    def close(self) -> None:
        super().close()
        self._shutdown()

    def __repr__(self) -> str:
        size = getattr(self, "size", None)
        return f"<PicameraSource {size} {getattr(self, 'format', '?')}>"


# --- the factory --------------------------------------------------------------------------------
def _split_paths(path: str) -> List[str]:
    return [p for p in path.split(os.pathsep) if p]


def make_source(source_config, default_paths: Optional[Sequence[PathLike]] = None,
                clock: Optional[Clock] = None,
                picamera2_factory: Optional[Callable[[], object]] = None) -> FrameSource:
    """The source a :class:`~edge_classifier.config.SourceConfig` asks for.

    ``kind = "picamera2"``: the camera (errors are raised). ``"replay"``: ``path`` (a folder, an
    image, or several separated by ':'), else ``default_paths``. ``"auto"``: the camera if
    picamera2 imports and a camera opens, else the replay (logging why).
    """
    cfg = source_config
    replay_paths = _split_paths(cfg.path) if cfg.path else list(default_paths or [])

    def camera() -> PicameraSource:
        return PicameraSource(cfg.width, cfg.height, picamera2_factory=picamera2_factory,
                              timeout=cfg.timeout, fps=cfg.fps, clock=clock)

    def replay() -> ReplaySource:
        if not replay_paths:
            raise NoImagesError("nothing to replay: set source.path to a folder or image files")
        return ReplaySource(replay_paths, fps=cfg.fps, loop=cfg.loop, clock=clock)

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
