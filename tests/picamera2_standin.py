"""A stand-in for picamera2's ``Picamera2`` class: exactly the calls PicameraSource makes.

It renders a known RGB scene into the lores stream in the configured format, the way the real
camera lays it out in memory (so the tests check the colour conversion, not a copy of it):

- ``RGB888``: B,G,R bytes per pixel; ``BGR888``: R,G,B; ``XRGB8888``: B,G,R,255;
  ``XBGR8888``: R,G,B,255.
- ``YUV420``: planar I420 of shape ``(h * 3 / 2, stride)`` with ``stride`` padded to a multiple
  of 64 bytes and the padding filled with junk, encoded with BT.601 (full range for sYCC, the
  preview configuration's colour space, or limited range) and 2x2-averaged chroma.

Like the real class on a Pi 4 (``platform = "VC4"``) it refuses a non-YUV lores stream.
"""

from __future__ import annotations

import copy
from typing import Callable, List, Optional, Union

import numpy as np

Scene = Union[tuple, np.ndarray, Callable[[int, int, int], np.ndarray]]


class ColorSpace:
    """Just the two attributes PicameraSource reads from libcamera's ColorSpace."""

    def __init__(self, name: str, range_: str, encoding: str):
        self.name = name
        self.range = f"Range.{range_}"
        self.ycbcrEncoding = f"YcbcrEncoding.{encoding}"

    def __repr__(self) -> str:
        return self.name

    @staticmethod
    def Sycc():
        return ColorSpace("sYCC", "Full", "Rec601")

    @staticmethod
    def Smpte170m():
        return ColorSpace("SMPTE170M", "Limited", "Rec601")


class Platform:
    """Mimics ``picamera2.platform.Platform`` members (only ``.name`` is read)."""

    def __init__(self, name: str):
        self.name = name


def render(scene: Scene, width: int, height: int, n: int) -> np.ndarray:
    """The HxWx3 uint8 RGB picture the camera sees for frame ``n``."""
    if callable(scene):
        rgb = np.asarray(scene(width, height, n), dtype=np.uint8)
    elif isinstance(scene, np.ndarray):
        rgb = scene.astype(np.uint8)
    else:
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        rgb[...] = np.asarray(scene, dtype=np.uint8)
    assert rgb.shape == (height, width, 3), rgb.shape
    return rgb


def encode_i420(rgb: np.ndarray, full_range: bool = True, stride: Optional[int] = None
                ) -> np.ndarray:
    """RGB -> picamera2's YUV420 array, BT.601, shape (h * 3 / 2, stride)."""
    h, w, _ = rgb.shape
    stride = stride or w
    f = rgb.astype(np.float64)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = (b - y) / 1.772
    v = (r - y) / 1.402
    if full_range:
        y, u, v = y, u + 128, v + 128
    else:
        y, u, v = 16 + y * 219 / 255, 128 + u * 224 / 255, 128 + v * 224 / 255

    def sub(c):  # 2x2 average
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    def q(c):
        return np.clip(np.rint(c), 0, 255).astype(np.uint8)

    out = np.full((h * 3 // 2, stride), 0x5A, dtype=np.uint8)  # junk in the padding
    flat = out.reshape(-1)
    planes = flat[:h * stride].reshape(h, stride)
    planes[:, :w] = q(y)
    cs = stride // 2
    for k, c in enumerate((sub(u), sub(v))):
        start = h * stride + k * (h // 2) * cs
        flat[start:start + (h // 2) * cs].reshape(h // 2, cs)[:, :w // 2] = q(c)
    return out


class Picamera2:
    """Stand-in camera. ``scene``: an RGB colour, an HxWx3 array, or ``f(w, h, n) -> array``.

    ``platform``: "VC4" (Pi 4 and older: lores must be YUV) or "PISP" (Pi 5).
    ``colour_space``: reported colour space (default sYCC, like the preview configuration).
    ``stall``: ``capture_array`` times out (a hung camera). ``fail_on``: a method name that
    raises RuntimeError. Every instance is appended to ``Picamera2.instances``.
    """

    instances: List["Picamera2"] = []

    def __init__(self, camera_num: int = 0, *, scene: Scene = (255, 0, 0),
                 platform: str = "VC4", colour_space: Optional[ColorSpace] = None,
                 stall: bool = False, fail_on: Optional[str] = None):
        self.platform = Platform(platform)
        self.scene = scene
        self._colour_space = colour_space or ColorSpace.Sycc()
        self.stall = stall
        self.fail_on = fail_on
        self.camera_config = None
        self.started = False
        self.closed = False
        self.calls: List[str] = []
        self.captures = 0
        Picamera2.instances.append(self)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.closed and name != "close":
            raise RuntimeError("Camera not opened")
        if self.fail_on == name:
            raise RuntimeError(f"stand-in {name} failure")

    def create_preview_configuration(self, main=None, lores=None, **kwargs) -> dict:
        self._call("create_preview_configuration")
        main = {"format": "XBGR8888", "size": (640, 480), **(main or {})}
        if lores is not None:
            lores = {"format": "YUV420", "size": main["size"], **lores}
        return {"use_case": "preview", "colour_space": self._colour_space, "buffer_count": 4,
                "main": main, "lores": lores, "raw": None, "controls": {}, **kwargs}

    def configure(self, config: dict) -> None:
        self._call("configure")
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        config = copy.copy(config)
        for name in ("main", "lores"):
            stream = config.get(name)
            if stream is None:
                continue
            w, h = stream["size"]
            if w % 2 or h % 2:
                raise RuntimeError("width and height should be even")
        lores = config.get("lores")
        if lores is not None:
            fmt = lores["format"]
            if self.platform.name == "VC4" and fmt not in ("YUV420", "YVU420"):
                raise RuntimeError("lores stream must be YUV")
            mw, mh = config["main"]["size"]
            w, h = lores["size"]
            if w > mw or h > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            lores = dict(lores)
            if fmt in ("YUV420", "YVU420"):
                lores["stride"] = -(-w // 64) * 64  # padded, as the ISP does
            else:
                lores["stride"] = w * (4 if fmt.startswith("X") else 3)
            config["lores"] = lores
        self.camera_config = config

    def start(self) -> None:
        self._call("start")
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def capture_array(self, name: str = "main", wait=None, signal_function=None) -> np.ndarray:
        self._call("capture_array")
        if not self.started:
            raise RuntimeError("Camera not started")
        if self.stall:
            raise TimeoutError()
        stream = self.camera_config[name]
        w, h = stream["size"]
        self.captures += 1
        rgb = render(self.scene, w, h, self.captures)
        fmt = stream["format"]
        if fmt == "RGB888":
            return np.ascontiguousarray(rgb[..., ::-1])
        if fmt == "BGR888":
            return rgb.copy()
        alpha = np.full((h, w, 1), 255, dtype=np.uint8)
        if fmt == "XRGB8888":
            return np.concatenate([rgb[..., ::-1], alpha], axis=2)
        if fmt == "XBGR8888":
            return np.concatenate([rgb, alpha], axis=2)
        if fmt == "YUV420":
            full = "Limited" not in self.camera_config["colour_space"].range
            return encode_i420(rgb, full_range=full, stride=stream["stride"])
        raise RuntimeError("Format " + fmt + " not supported")

    def stop(self) -> None:
        self._call("stop")
        self.started = False

    def close(self) -> None:
        self._call("close")
        self.started = False
        self.closed = True


def failing_picamera2(message: str = "Camera __init__ sequence did not complete."):
    """A factory that fails to open, as ``Picamera2()`` does with no camera or a busy one."""
    def open_camera(camera_num: int = 0):
        raise RuntimeError(message)
    return open_camera
