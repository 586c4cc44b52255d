"""Image loading and the one preprocessing function shared by training and inference.

Every path into a model — ``classify``, ``embed``, training, the camera loop — goes through
:func:`preprocess`, so a sample learned from a file and a live frame are prepared identically::

    rgb = load_image("cat.bmp")               # HxWx3 uint8, RGB order
    x = preprocess(rgb, (224, 224), "crop")   # 224x224x3 uint8, centre crop
"""

from __future__ import annotations

import os
import warnings
from typing import Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_classifier.errors import ImageError

RESIZE_MODES = ("crop", "squash")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: grayscale, palette, alpha, CMYK and 16/32-bit too.

    Transparent pixels are composited over white. High-bit-depth grayscale is scaled down
    (PIL's own conversion would clip it to white).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        gray = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: "os.PathLike[str] | str") -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array, upright (EXIF orientation applied).

    Raises :class:`ImageError` naming the file when it is missing, not an image, or truncated.
    """
    name = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as image:
                image.load()
                image = ImageOps.exif_transpose(image) or image
                rgb = to_rgb(image)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: cannot decode image ({exc})") from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{name}: unexpected image shape {array.shape}")
    return array


def preprocess(rgb: np.ndarray, size: Tuple[int, int], mode: str = "crop") -> np.ndarray:
    """Resize an HxWx3 uint8 RGB frame to the model's ``size`` (height, width).

    ``mode="crop"`` takes the largest centred region with the model's aspect ratio (a centred
    square for square models) and resizes it; ``"squash"`` resizes the whole frame, ignoring
    the aspect ratio. Bilinear filtering. Returns a new HxWx3 uint8 array.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
    frame = np.asarray(rgb)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ImageError(f"expected an HxWx3 uint8 RGB frame, got {frame.dtype} {frame.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = frame.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return frame.copy()
    image = Image.fromarray(frame)
    if mode == "crop":
        # Largest box with the output's aspect ratio, centred.
        scale = min(in_w / out_w, in_h / out_h)
        crop_w, crop_h = max(1, round(out_w * scale)), max(1, round(out_h * scale))
        left, top = (in_w - crop_w) // 2, (in_h - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    return np.asarray(image.resize((out_w, out_h), Image.BILINEAR), dtype=np.uint8)


def list_images(folder: "os.PathLike[str] | str"):
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    entries = sorted(os.listdir(folder))
    return [os.path.join(folder, e) for e in entries
            if not e.startswith(".") and e.lower().endswith(IMAGE_SUFFIXES)
            and os.path.isfile(os.path.join(folder, e))]
