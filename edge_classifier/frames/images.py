"""Image loading and the one preprocessing function shared by training and inference.

Every path into a model — ``classify``, ``embed``, training, the camera loop — goes through
:func:`preprocess`, so a sample learned from a file and a live frame are prepared identically::

    rgb = load_image("cat.bmp")                         # HxWx3 uint8, RGB order
    x = preprocess(rgb, (224, 224), "crop")             # 224x224x3 uint8, centre crop
    small = load_image("phone.jpg", size_hint=(224, 224))  # decoded near the size it is used at

Image files are untrusted input (replays, data-set imports, uploads): :func:`load_image` refuses
a file whose header promises more than ``max_pixels`` before decoding a byte of it, decodes only
the formats in :data:`FORMATS` (never EPS, which would run Ghostscript), and turns every decoder
failure into one :class:`~edge_classifier.errors.ImageError` naming the file.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Callable, Optional, Tuple, Union

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from edge_classifier.errors import ImageError

RESIZE_MODES = ("crop", "squash")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: The Pillow formats :func:`load_image` decodes (JPEG includes phones' MPO files; PPM also
#: reads PGM and PBM).
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
#: Default refusal threshold: 50 megapixels, a little above the largest common phone photo
#: (8160x6120), whose full decode is 150 MB as RGB (more for 16-bit or float images).
DEFAULT_MAX_PIXELS = 50_000_000

SizeHint = Union[int, Tuple[int, int], None]

_log = logging.getLogger(__name__)

# EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
# Modes Image.reduce() cannot average (palette indices, bits, 16-bit), and what to average instead.
_AVERAGE_AS = {"1": "L", "PA": "RGBA", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: grayscale, palette, alpha, CMYK and 16/32-bit too::

        rgb = to_rgb(Image.open("scan.tif"))   # an "I;16" scan becomes RGB, scaled not clipped

    Transparent pixels are composited over white. High-bit-depth grayscale is scaled down
    (PIL's own conversion would clip it to white); NaN and infinite samples become black/white.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float32)
        values = np.nan_to_num(values, nan=0.0, posinf=np.finfo(np.float32).max, neginf=0.0)
        peak = float(values.max(initial=0))
        top = 65535.0 if mode.startswith("I;16") or peak > 255 else 255.0
        if mode == "F" and peak <= 1.0:
            top = 1.0
        gray = np.clip(values * np.float32(255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def needed_short_side(size_hint: SizeHint) -> int:
    """The short side a decode for ``size_hint`` keeps: twice the hint's larger side (0: all)::

        needed_short_side((224, 224)) == 448;  needed_short_side(None) == 0

    Twice, so that :func:`preprocess` (centre crop or squash, bilinear) and the 224-px
    thumbnails still downscale from real detail: their result matches a full-size decode.
    """
    if size_hint is None:
        return 0
    sides = (size_hint, size_hint) if isinstance(size_hint, (int, np.integer)) else size_hint
    if (not isinstance(sides, (tuple, list)) or len(sides) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                       for s in sides)):
        raise ValueError(f"size_hint must be None, a side or (height, width) in pixels, "
                         f"not {size_hint!r}")
    return 2 * int(max(sides))


def shrink(image: Image.Image, short_side: int) -> Image.Image:
    """Box-average ``image`` by the largest whole factor that keeps ``short_side`` pixels::

        shrink(Image.new("RGB", (9000, 9000)), 448).size == (450, 450)   # factor 20

    Returns ``image`` itself when no factor of 2 or more fits. Palette, 1-bit and 16-bit images
    are converted first (averaging palette indices would be nonsense).
    """
    factor = min(image.size) // short_side if short_side > 0 else 0
    if factor < 2:
        return image
    if image.mode == "P":
        image = to_rgb(image)
    elif image.mode in _AVERAGE_AS:
        image = image.convert(_AVERAGE_AS[image.mode])
    return image.reduce(factor)


def _orientation(image: Image.Image) -> Optional[Image.Transpose]:
    """The transpose that makes ``image`` upright per its EXIF, or None (also for bad EXIF)."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation)
    except Exception as exc:  # a malformed EXIF block must not cost the picture
        _log.debug("ignoring unreadable EXIF: %s: %s", type(exc).__name__, exc)
        return None
    return _UPRIGHT.get(value) if isinstance(value, int) else None


def _check_pixels(name: str, size: Tuple[int, int], max_pixels: Optional[int]) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: the header says the image is {width}x{height} pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{name}: image too large: {width}x{height} pixels "
                         f"({width * height / 1e6:.3g} megapixels, more than the limit of "
                         f"{max_pixels / 1e6:g}); shrink it first")


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    """``new``, after freeing ``old``'s pixels (when it is a different image)."""
    if new is not old:
        old.close()
    return new


def _to_array(image: Image.Image) -> np.ndarray:
    """An RGB image as a new HxWx3 uint8 array, copied in strips of about 4 MB.

    ``np.asarray(image)`` goes through ``tobytes()``, which holds the pixels twice more (its
    chunks and their join) on top of the image: three copies of a big photo at once.
    """
    width, height = image.size
    array = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, (4 << 20) // (3 * width))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        array[top:bottom] = np.asarray(image.crop((0, top, width, bottom)), dtype=np.uint8)
    return array


def _decode(name: str, need: int, max_pixels: Optional[int]) -> np.ndarray:
    """Open, check the header, decode near ``need`` pixels of short side; upright RGB array.

    Each step frees the previous image, so the peak is one full decode (plus its shrunk copy)
    with a hint, and the decoded image twice (it and its array) without.
    """
    with Image.open(name, formats=FORMATS) as picture:
        _check_pixels(name, picture.size, max_pixels)
        if need:
            picture.draft(None, (need, need))  # JPEG: the decoder scales by 1/2, 1/4 or 1/8
        picture.load()
        upright = _orientation(picture)
        picture = _replace(picture, shrink(picture, need))
        if upright is not None:
            picture = _replace(picture, picture.transpose(upright))
        picture = _replace(picture, to_rgb(picture))
        try:
            return _to_array(picture)
        finally:
            picture.close()


def load_image(path: "os.PathLike[str] | str", size_hint: SizeHint = None,
               max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array, upright (EXIF orientation applied)::

        frame = load_image("photos/cat.jpg")                       # full resolution
        frame = load_image(upload, size_hint=backbone.input_size)  # short side >= 448 px

    ``size_hint``: the (height, width) — or side — the image will be resized to. The image is
    then decoded at a short side of at least twice its larger side (:func:`needed_short_side`)
    instead of in full: JPEGs by DCT scaling in the decoder (a 9000x9000 JPEG then costs a few
    MB, not 800), other formats box-averaged right after one full decode. ``max_pixels``: a
    file whose header promises more pixels is refused before decoding (None: only Pillow's own
    decompression-bomb limit of about 179 megapixels applies).

    Raises :class:`ImageError` naming the file when it is missing, not an image, too large,
    truncated or otherwise undecodable — never another exception from the decoder.
    """
    name = os.fspath(path)
    need = needed_short_side(size_hint)
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Pillow's corrupt-EXIF and bomb warnings (max_pixels rules) are logged, not printed.
            warnings.simplefilter("always")
            array = _decode(name, need, max_pixels)
        for warning in caught:
            _log.debug("%s: %s", name, warning.message)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{name}: cannot read it (permission denied)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unknown or unsupported format, or cut off "
                         f"in its header)") from None
    except Image.DecompressionBombError as exc:  # beyond even Pillow's limit: refused at open
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)) / 1e6:.3g} megapixels" if pixels else str(exc)
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise ImageError(f"{name}: image too large: {size}, more than Pillow's limit of "
                         f"{limit:.0f}; shrink it first") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # the decoders' OSError, SyntaxError, ValueError, struct.error...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"{name}: cannot decode image ({detail})") from None
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{name}: unexpected image shape {array.shape}")
    return array


#: ``resample(region, (height, width))``: a uint8 HxWx3 array (any strides) resized to that
#: size, bilinear; :func:`preprocess` uses Pillow's unless given another (the backbone passes
#: the TFLite runtime's, :mod:`edge_classifier.backbone.resize`).
Resample = Callable[[np.ndarray, Tuple[int, int]], np.ndarray]


def pillow_resample(region: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Pillow's bilinear resize of ``region`` to ``size`` (height, width)."""
    image = Image.fromarray(np.ascontiguousarray(region))
    return np.asarray(image.resize((int(size[1]), int(size[0])), Image.BILINEAR), dtype=np.uint8)


def resize_box(frame_size: Tuple[int, int], size: Tuple[int, int],
               mode: str = "crop") -> Tuple[int, int, int, int]:
    """(top, left, height, width) of the part of a frame of ``frame_size`` (height, width)
    that :func:`preprocess` resizes to ``size``: the largest centred box with the output's
    aspect ratio for ``"crop"``, the whole frame for ``"squash"``."""
    in_h, in_w = int(frame_size[0]), int(frame_size[1])
    if mode != "crop":
        return 0, 0, in_h, in_w
    out_h, out_w = int(size[0]), int(size[1])
    scale = min(in_w / out_w, in_h / out_h)
    crop_w, crop_h = max(1, round(out_w * scale)), max(1, round(out_h * scale))
    return (in_h - crop_h) // 2, (in_w - crop_w) // 2, crop_h, crop_w


def preprocess(rgb: np.ndarray, size: Tuple[int, int], mode: str = "crop",
               resample: Optional[Resample] = None) -> np.ndarray:
    """Resize an HxWx3 uint8 RGB frame to the model's ``size`` (height, width).

    ``mode="crop"`` takes the largest centred region with the model's aspect ratio (a centred
    square for square models) and resizes it; ``"squash"`` resizes the whole frame, ignoring
    the aspect ratio. Bilinear filtering, by ``resample`` (default :func:`pillow_resample`).
    A frame already at ``size`` (the camera's stream at the model's input size, see
    :class:`~edge_classifier.frames.camera.PicameraSource`) is returned as a read-only view
    of it, without a copy; any other result is a new HxWx3 uint8 array.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
    frame = np.asarray(rgb)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ImageError(f"expected an HxWx3 uint8 RGB frame, got {frame.dtype} {frame.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = frame.shape[:2]
    if in_h < 1 or in_w < 1:
        raise ImageError(f"expected a frame with pixels, got an empty {in_w}x{in_h} one")
    if (in_h, in_w) == (out_h, out_w):
        view = frame.view()
        view.flags.writeable = False  # no copy, and the caller's frame stays the caller's
        return view
    top, left, crop_h, crop_w = resize_box((in_h, in_w), (out_h, out_w), mode)
    frame = frame[top:top + crop_h, left:left + crop_w]
    out = (resample or pillow_resample)(frame, (out_h, out_w))
    if out.shape != (out_h, out_w, 3) or out.dtype != np.uint8:  # a resample's contract
        raise ImageError(f"the resize gave {out.dtype} {out.shape}, not {out_h}x{out_w}x3 uint8")
    return out


def list_images(folder: "os.PathLike[str] | str"):
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    entries = sorted(os.listdir(folder))
    return [os.path.join(folder, e) for e in entries
            if not e.startswith(".") and e.lower().endswith(IMAGE_SUFFIXES)
            and os.path.isfile(os.path.join(folder, e))]
