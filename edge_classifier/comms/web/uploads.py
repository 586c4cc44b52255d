"""Uploaded pictures: bounded in bytes, files and decoded pixels, never named by the sender.

::

    files, problems = await read_files(request, "images", limits)   # multipart form data
    kind = probe(files[0].data, files[0].name, limits)              # "png"; UploadError if not
    rgb = decode(data, "cat.jpg", limits)                           # HxWx3, at most MAX_SIDE

A file name from the network is only ever shown (:func:`shown_name`: its last component,
printable, at most 100 characters); a staged upload is written as ``<n>.<format>`` in a folder
of our own (:func:`stage`).
"""

from __future__ import annotations

import io
import os
import tempfile
import unicodedata
import warnings
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_classifier.comms.web.aio import http_exceptions
from edge_classifier.errors import UploadError
from edge_classifier.frames.images import to_rgb

FORMATS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif", "WEBP": "webp",
           "TIFF": "tif", "PPM": "ppm"}
MAX_SIDE = 1024  # pictures to predict and browser frames are decoded at most this large
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Limits:
    bytes: int
    files: int
    pixels: int

    @classmethod
    def of(cls, web_config) -> "Limits":
        return cls(web_config.max_upload_bytes, web_config.max_upload_files,
                   web_config.max_upload_pixels)


@dataclass(frozen=True)
class Upload:
    name: str  # as shown (see shown_name), never used as a path
    data: bytes


def shown_name(filename: Optional[str], index: int) -> str:
    """What to call an uploaded file in messages: its base name, printable, short."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c if unicodedata.category(c)[0] != "C" else "?" for c in name).strip()
    if len(name) > 100:
        name = name[:97] + "..."
    return name or f"file {index + 1}"


async def read_files(request, field: str, limits: Limits,
                     max_files: Optional[int] = None) -> Tuple[List[Upload], List[str]]:
    """The files of multipart field ``field`` (others are ignored), and one line for each
    file refused for its size. More than ``max_files`` (default ``limits.files``) files, or a
    body that is not multipart, raises :class:`UploadError`."""
    most = limits.files if max_files is None else max_files
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as exc:  # aiohttp asserts the content type
        raise UploadError(f"expected multipart/form-data with the pictures in {field!r} "
                          f"({exc or 'no boundary'})") from None
    files: List[Upload] = []
    problems: List[str] = []
    seen = 0
    while True:
        try:
            part = await reader.next()
        except (http_exceptions.HttpProcessingError, ValueError) as exc:
            raise UploadError(f"the upload is malformed ({getattr(exc, 'message', exc)})"
                              .replace("\n", " ")[:200]) from None
        if part is None:
            break
        if getattr(part, "name", None) != field or not hasattr(part, "read_chunk"):
            await part.release()
            continue
        name = shown_name(part.filename, seen)
        seen += 1
        if seen > most:
            raise UploadError(f"more than {most} file{'s' if most > 1 else ''} in one upload; "
                              "send them in smaller batches")
        data = bytearray()
        while True:
            chunk = await part.read_chunk(CHUNK)
            if not chunk:
                break
            data += chunk
            if len(data) > limits.bytes:
                await part.release()
                break
        if len(data) > limits.bytes:
            problems.append(f"{name}: larger than the limit of {limits.bytes} bytes "
                            "(web.max_upload_bytes)")
            continue
        files.append(Upload(name, bytes(data)))
    if not files and not problems:
        raise UploadError(f"no file in the form field {field!r}")
    return files, problems


def probe(data: bytes, name: str, limits: Limits) -> str:
    """The file's format (``"jpg"``, ``"png"``, ...) from its header, checked against the
    pixel limit before anything is decoded; :class:`UploadError` naming the file otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt, (width, height) = image.format, image.size
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, OSError, ValueError, SyntaxError):
        raise UploadError(f"{name}: not a picture (or a format that is not supported)") \
            from None
    if fmt not in FORMATS:
        raise UploadError(f"{name}: {fmt} pictures are not supported; use JPEG or PNG")
    if width * height > limits.pixels:
        raise UploadError(f"{name}: {width}x{height} is more than the limit of {limits.pixels} "
                          "pixels (web.max_upload_pixels)")
    return FORMATS[fmt]


def decode(data: bytes, name: str, limits: Limits, max_side: int = MAX_SIDE) -> np.ndarray:
    """An uploaded picture as an HxWx3 uint8 RGB array, upright, its longer side at most
    ``max_side`` (JPEGs are decoded at a reduced size directly)."""
    probe(data, name, limits)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max_side, max_side))
            image.load()
            image = ImageOps.exif_transpose(image) or image
            image = to_rgb(image)
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise UploadError(f"{name}: cannot decode the picture ({exc})") from None
    if array.ndim != 3 or array.shape[2] != 3:
        raise UploadError(f"{name}: unexpected picture shape {array.shape}")
    return array


def stage(files: List[Upload], limits: Limits, root: str) -> Tuple[str, List[Tuple[str, str]],
                                                                    List[str]]:
    """Write the pictures among ``files`` to a new folder under ``root`` as ``<n>.<format>``:
    (folder, [(path, shown name)], one line per file that is not a usable picture)."""
    folder = tempfile.mkdtemp(prefix="upload-", dir=root)
    staged: List[Tuple[str, str]] = []
    problems: List[str] = []
    for i, upload in enumerate(files):
        try:
            suffix = probe(upload.data, upload.name, limits)
        except UploadError as exc:
            problems.append(str(exc))
            continue
        path = os.path.join(folder, f"{i}.{suffix}")
        with open(path, "wb") as f:
            f.write(upload.data)
        staged.append((path, upload.name))
    return folder, staged, problems
