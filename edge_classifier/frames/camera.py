"""The Raspberry Pi camera as a frame source, through picamera2's small "lores" stream::

    with PicameraSource(320, 240) as camera:
        frame = camera.read()                 # 240x320x3 RGB

    # at the model's input size: the ISP crops and scales, the CPU does no resizing
    with PicameraSource(224, 224, resize="crop", crop=(0.5, 0, 1, 1)) as camera:
        frame = camera.read()                 # 224x224x3: the centre square of the right half

Wiring: a Raspberry Pi camera module on the CSI connector (the ribbon cable's contacts facing the
connector's). Only the lores stream is read: RGB888 on a Pi 5, YUV420 (I420) on a Pi 4 and
older, converted with NumPy (:func:`~edge_classifier.frames.colour.lores_to_rgb`).

picamera2 is imported only inside :class:`PicameraSource`, so this module imports anywhere.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Callable, Optional, Tuple

import numpy as np

from edge_classifier.core.clock import Clock
from edge_classifier.errors import CameraError, SourceClosedError
from edge_classifier.frames.base import FrameSource
from edge_classifier.frames.colour import lores_to_rgb
from edge_classifier.frames.region import Crop, scaler_crop

__all__ = ["PicameraSource"]

_log = logging.getLogger(__name__)

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

    A hung camera still closes: picamera2 keeps a timed-out capture queued and its ``stop()``
    waits behind it for ever, so the queue is flushed (``cancel_all_and_flush``) after a
    timeout and before stopping, and ``stop``/``close`` run on a helper thread that ``close()``
    waits for at most ``stop_timeout`` seconds (then logs an error and leaves the camera).
    ``close()`` from another thread while ``read()`` waits makes that read raise
    :class:`SourceClosedError`.

    ``resize`` (``"crop"`` or ``"squash"``, the backbone's mode): ``width`` x ``height`` is the
    model's input and the ISP fits the picture to it for free, through picamera2's
    ``ScalerCrop`` control (``ScalerCrops`` on a Pi 5, whose streams can have crops of their
    own): the centred box of the field of view (or of ``crop``) with the stream's aspect
    ratio, or all of it squashed. The frames are then already what the model takes, so
    :func:`~edge_classifier.frames.images.preprocess` passes them through. Without ``resize``
    the stream is a plain small picture and ``crop`` (if any) is cut out on the CPU.
    """

    def __init__(self, width: int = 320, height: int = 240,
                 picamera2_factory: Optional[Callable[[], object]] = None,
                 timeout: float = 10.0, fps: float = 0.0, clock: Optional[Clock] = None,
                 stop_timeout: float = 5.0, crop: Optional[Crop] = None,
                 resize: Optional[str] = None):
        super().__init__(fps, clock, crop)
        if resize not in (None, "crop", "squash"):
            raise ValueError(f"resize must be None, 'crop' or 'squash', not {resize!r}")
        self.resize = resize
        self.scaler_crop: Optional[Tuple[int, int, int, int]] = None
        width, height = int(width), int(height)
        if width < 2 or height < 2:
            raise ValueError(f"lores size must be at least 2x2, not {width}x{height}")
        self.timeout = float(timeout)
        self.stop_timeout = float(stop_timeout)
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
            if self.resize is not None:
                self._set_scaler_crop()
            self._camera.start()
        except Exception as exc:
            raise CameraError(f"cannot configure or start the camera ({type(exc).__name__}: "
                              f"{exc}): {_CAMERA_HINT}") from exc
        if self.format not in ("YUV420", "YVU420", "RGB888", "BGR888", "XRGB8888", "XBGR8888"):
            raise CameraError(f"the camera gave lores format {self.format!r}, which "
                              f"edge-classifier cannot convert")
        _log.info("camera lores stream: %dx%d %s", self.size[0], self.size[1], self.format)

    def _set_scaler_crop(self) -> None:
        """Ask the ISP for the part of the field of view the model sees (see the class)."""
        controls = self._camera.camera_controls
        if "ScalerCrop" not in controls:
            _log.info("the camera has no ScalerCrop control: crop and resize on the CPU")
            return
        full = controls["ScalerCrop"][1]  # (min, max, default): max is the mode's whole view
        size = (self.size[1], self.size[0])
        rect = scaler_crop(full, self.crop, size, self.resize)
        if "ScalerCrops" in controls:  # PiSP: one rectangle per stream, main first
            self._camera.set_controls({"ScalerCrops": [rect, rect]})
        else:
            self._camera.set_controls({"ScalerCrop": rect})
        self.scaler_crop = rect
        self.crop_applied = True
        _log.info("camera ScalerCrop %s of %s for a %dx%d stream", rect, tuple(full),
                  self.size[0], self.size[1])

    def _read(self) -> np.ndarray:
        camera = self._camera
        if camera is None:
            raise SourceClosedError("PicameraSource is closed")
        try:
            array = camera.capture_array("lores", wait=self.timeout)
        except (TimeoutError, concurrent.futures.TimeoutError) as exc:
            _flush(camera)  # else the stale job takes the next frame and blocks stop()
            raise CameraError(f"no frame from the camera for {self.timeout:g} s: it is hung "
                              f"or disconnected; {_CAMERA_HINT}") from exc
        except concurrent.futures.CancelledError as exc:
            if self._closed:
                raise SourceClosedError("PicameraSource was closed while waiting for a "
                                        "frame") from exc
            raise CameraError("the frame capture was cancelled") from exc
        except Exception as exc:
            raise CameraError(f"capturing a frame failed ({type(exc).__name__}: {exc})") from exc
        return lores_to_rgb(array, self.format, self.size[0], self._colour_space)

    def _shutdown(self) -> None:
        camera, self._camera = getattr(self, "_camera", None), None
        if camera is None:
            return
        _flush(camera)

        def stop_and_close() -> None:
            for step in ("stop", "close"):
                try:
                    getattr(camera, step)()
                except Exception as exc:  # closing must not fail
                    _log.debug("camera %s failed: %s", step, exc)

        closer = threading.Thread(target=stop_and_close, name="camera-close", daemon=True)
        closer.start()
        closer.join(self.stop_timeout)
        if closer.is_alive():
            _log.error("the camera did not stop within %g s (hung in the driver?); left "
                       "behind, a restart may be needed: %s", self.stop_timeout, _CAMERA_HINT)

    def close(self) -> None:
        super().close()
        self._shutdown()

    def __repr__(self) -> str:
        size = getattr(self, "size", None)
        return f"<PicameraSource {size} {getattr(self, 'format', '?')}>"


def _flush(camera) -> None:
    """Cancel and drop picamera2's queued jobs (a timed-out capture); older picamera2 lacks it."""
    flush = getattr(camera, "cancel_all_and_flush", None)
    if flush is None:
        return
    try:
        flush()
    except Exception as exc:
        _log.debug("camera cancel_all_and_flush failed: %s", exc)
