"""Colour conversion of picamera2's lores frames to RGB.

picamera2 names formats after DRM fourccs, so "RGB888" is BGR in memory and "XRGB8888" is
BGRX; on Pi 4 and older the lores stream is planar YUV420 (I420), converted here with numpy.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from edge_classifier.errors import CameraError

_MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def yuv420_to_rgb(array: np.ndarray, width: int, full_range: bool = True,
                  matrix: str = "bt601", swap_uv: bool = False) -> np.ndarray:
    """Convert a picamera2 ``YUV420`` (I420) array to HxWx3 uint8 RGB.

    ``array`` is ``(height * 3 / 2, stride)`` uint8 as ``capture_array`` returns it: ``height``
    rows of Y (``stride`` bytes each, ``width`` of them pixels), then the U plane, then the V
    plane, each ``height / 2`` rows of ``stride / 2`` bytes. Chroma is upsampled by repeating
    each sample over its 2x2 block. ``full_range``: Y and UV span 0-255 (sYCC/JPEG); else Y
    16-235 and UV 16-240 (SMPTE 170M, Rec.709). ``matrix``: "bt601" or "bt709". ``swap_uv``
    for ``YVU420``. Returns a new array.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 2 or array.shape[0] % 3:
        raise CameraError(f"YUV420 frame has an unexpected shape {array.shape} {array.dtype}")
    height = array.shape[0] * 2 // 3
    stride = array.shape[1]
    width = int(width)
    if not 0 < width <= stride:
        raise CameraError(f"YUV420 frame is {stride} bytes wide, less than width {width}")
    cw, ch, cstride = (width + 1) // 2, (height + 1) // 2, stride // 2
    flat = array.reshape(-1)
    y_size, c_size = height * stride, ch * cstride
    if flat.size < y_size + 2 * c_size:
        raise CameraError(f"YUV420 frame of shape {array.shape} is too small")
    y = flat[:y_size].reshape(height, stride)[:, :width].astype(np.float32)
    u = flat[y_size:y_size + c_size].reshape(ch, cstride)[:, :cw].astype(np.float32)
    v = flat[y_size + c_size:y_size + 2 * c_size].reshape(ch, cstride)[:, :cw].astype(np.float32)
    if swap_uv:
        u, v = v, u
    u = u.repeat(2, axis=0).repeat(2, axis=1)[:height, :width] - 128.0
    v = v.repeat(2, axis=0).repeat(2, axis=1)[:height, :width] - 128.0
    if full_range:
        luma = y
    else:
        luma = (y - 16.0) * (255.0 / 219.0)
        u *= 255.0 / 224.0
        v *= 255.0 / 224.0
    kr, kb = _MATRICES[matrix]
    kg = 1.0 - kr - kb
    rgb = np.empty((height, width, 3), dtype=np.float32)
    rgb[..., 0] = luma + 2.0 * (1.0 - kr) * v
    rgb[..., 1] = luma - (2.0 * kb * (1.0 - kb) / kg) * u - (2.0 * kr * (1.0 - kr) / kg) * v
    rgb[..., 2] = luma + 2.0 * (1.0 - kb) * u
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _colour_space(colour_space) -> Tuple[bool, str]:
    """(full_range, matrix) from a libcamera ColorSpace; sYCC (full, BT.601) when unknown."""
    if colour_space is None:
        return True, "bt601"
    full = "limited" not in str(getattr(colour_space, "range", "")).lower()
    encoding = str(getattr(colour_space, "ycbcrEncoding", "")).lower()
    return full, ("bt709" if "709" in encoding else "bt601")


def lores_to_rgb(array: np.ndarray, fmt: str, width: int, colour_space=None) -> np.ndarray:
    """Convert one ``capture_array`` result in picamera2 format ``fmt`` to HxWx3 RGB.

    picamera2 names formats by DRM fourcc, the reverse of the memory order: ``RGB888`` is
    B,G,R in memory (channels reversed here), ``BGR888`` is R,G,B; ``XRGB8888`` (B,G,R,X) and
    ``XBGR8888`` (R,G,B,X) also lose their fourth channel. ``YUV420``/``YVU420`` go through
    :func:`yuv420_to_rgb` with the ``colour_space`` the camera reports (libcamera's
    ``ColorSpace``: its ``range`` and ``ycbcrEncoding``; None means sYCC: full range BT.601,
    what picamera2's preview configuration asks for).
    """
    array = np.asarray(array)
    if fmt in ("YUV420", "YVU420"):
        full, matrix = _colour_space(colour_space)
        return yuv420_to_rgb(array, width, full_range=full, matrix=matrix,
                             swap_uv=(fmt == "YVU420"))
    channels = {"RGB888": 3, "BGR888": 3, "XRGB8888": 4, "XBGR8888": 4}.get(fmt)
    if channels is None:
        raise CameraError(f"unsupported lores format {fmt!r}: use YUV420, RGB888, BGR888, "
                          f"XRGB8888 or XBGR8888")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != channels:
        raise CameraError(f"{fmt} frame has an unexpected shape {array.shape} {array.dtype}")
    if fmt in ("RGB888", "XRGB8888"):
        return np.ascontiguousarray(array[:, :, 2::-1])
    return np.ascontiguousarray(array[:, :, :3])
