"""The region of interest (``source.crop``): a rectangle of the frame, in normalised coordinates::

    crop = check_crop([0.5, 0.0, 1.0, 1.0])          # (x0, y0, x1, y1): the right half
    region = crop_frame(frame, crop)                 # a view of those pixels, no copy
    pixel_box(frame.shape, crop)                     # (left, top, right, bottom) in pixels
    scaler_crop((0, 0, 4608, 2592), crop, (224, 224), "crop")   # the ISP's ScalerCrop

The crop applies to frames from the source (camera, replay): the camera's ISP crops and scales
(picamera2's ``ScalerCrop``), other sources crop on the CPU. Pictures a user imports or uploads
are pictures of the region already and are used whole.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

Crop = Tuple[float, float, float, float]

#: The smallest side of a crop, as a fraction of the frame's side.
MIN_SIDE = 0.01


def check_crop(value: Optional[Sequence[float]]) -> Optional[Crop]:
    """``value`` as an ``(x0, y0, x1, y1)`` tuple of floats, or None for no crop (None or empty).

    Raises ValueError (one line, saying what is wrong) unless it is four numbers within 0..1
    with ``x0 < x1`` and ``y0 < y1``, each side at least :data:`MIN_SIDE` of the frame's.
    """
    if value is None or (not isinstance(value, str) and len(value) == 0):
        return None
    if isinstance(value, (str, bytes)) or len(value) != 4:
        raise ValueError(f"expected four numbers [x0, y0, x1, y1] (fractions of the frame's "
                         f"width and height), got {value!r}")
    out = []
    for name, v in zip(("x0", "y0", "x1", "y1"), value):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a number, not {v!r}")
        v = float(v)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (a fraction of the frame), "
                             f"not {v!r}")
        out.append(v)
    x0, y0, x1, y1 = out
    if x1 - x0 < MIN_SIDE:
        raise ValueError(f"x1 ({x1:g}) must be greater than x0 ({x0:g}) by at least {MIN_SIDE:g}")
    if y1 - y0 < MIN_SIDE:
        raise ValueError(f"y1 ({y1:g}) must be greater than y0 ({y0:g}) by at least {MIN_SIDE:g}")
    return (x0, y0, x1, y1)


def pixel_box(shape: Sequence[int], crop: Crop) -> Tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` pixels of ``crop`` in a frame of ``shape`` (H, W, ...);
    at least one pixel each way."""
    height, width = int(shape[0]), int(shape[1])
    left, right = round(crop[0] * width), round(crop[2] * width)
    top, bottom = round(crop[1] * height), round(crop[3] * height)
    left, top = min(left, width - 1), min(top, height - 1)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_frame(frame: np.ndarray, crop: Optional[Crop]) -> np.ndarray:
    """The region ``crop`` of an HxWx3 frame: a view (no copy); the frame itself for None."""
    if crop is None:
        return frame
    left, top, right, bottom = pixel_box(frame.shape, crop)
    return frame[top:bottom, left:right]


def centred_box(width: float, height: float, out_size: Tuple[int, int]
                ) -> Tuple[float, float, float, float]:
    """``(left, top, width, height)`` of the largest box with ``out_size``'s (height, width)
    aspect ratio centred in a ``width`` x ``height`` area (what ``resize = "crop"`` keeps)."""
    out_h, out_w = out_size
    scale = min(width / out_w, height / out_h)
    w, h = out_w * scale, out_h * scale
    return (width - w) / 2, (height - h) / 2, w, h


def scaler_crop(full: Sequence[int], crop: Optional[Crop], out_size: Tuple[int, int],
                resize: str) -> Tuple[int, int, int, int]:
    """picamera2's ``ScalerCrop`` rectangle ``(x, y, w, h)`` in sensor pixels for a stream of
    ``out_size`` (height, width) that shows ``crop`` of the full field of view ``full``
    (``camera_controls["ScalerCrop"][1]``) fitted as :func:`~edge_classifier.frames.images.preprocess`
    would fit it: ``"crop"`` keeps the centred box with the stream's aspect ratio, ``"squash"``
    all of it (the ISP then scales each axis on its own)."""
    fx, fy, fw, fh = (int(v) for v in full)
    x0, y0, x1, y1 = crop if crop is not None else (0.0, 0.0, 1.0, 1.0)
    left, top, width, height = fx + x0 * fw, fy + y0 * fh, (x1 - x0) * fw, (y1 - y0) * fh
    if resize == "crop":
        dx, dy, width, height = centred_box(width, height, out_size)
        left, top = left + dx, top + dy
    x, y = int(round(left)), int(round(top))
    w, h = max(1, int(round(width))), max(1, int(round(height)))
    return x, y, min(w, fx + fw - x), min(h, fy + fh - y)
