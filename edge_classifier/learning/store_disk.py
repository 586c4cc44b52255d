"""How a state's samples look on disk, and how a lost class list is found again.

::

    samples/<folder>/name        the class name (so the folder is found again without the list)
    samples/<folder>/<id>.npy    one sample's embedding views, VxD float32
    samples/<folder>/<id>.jpg    its thumbnail
    samples/.trash-*             a folder an explicit deletion is removing

Folder names are ours (``c`` and 12 hex digits); anything else that ``store.json`` names is not
a folder of the state and is never read, written or deleted. Sample ids sort by time.

Every file of a state is read through :func:`open_own`: never through a symbolic link, never
from a FIFO or a device (which would block or never end), so whatever a state's files say or
are, nothing outside the state is read::

    data = read_own(root / "store.json", limit=64 << 20)   # OSError if a link, FIFO, too big
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import secrets
import shutil
import stat
from struct import error as struct_error
import time
from collections import Counter, OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image

from edge_classifier.core import atomic
from edge_classifier.core.names import class_key, validate_class_name
from edge_classifier.errors import ReadOnlyStoreError, StorageFullError, StoreError

FORMAT = 1
META = "store.json"
SAMPLES = "samples"
TRASH_PREFIX = ".trash-"
FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
JSON_LIMIT = 64 << 20  # the largest class list, head metadata or import list read
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
    getattr(os, "O_CLOEXEC", 0)


def open_fd(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A descriptor of ``path`` if it is a regular file (opened with ``flags``, never through a
    symbolic link and never blocking on a FIFO); OSError naming what it is otherwise. Opened
    for writing in place, it must not be a hard link either (another file's contents)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link (never followed out of the state)",
                          str(path)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or folder)",
                          str(path))
        if flags & (os.O_WRONLY | os.O_RDWR) and info.st_nlink > 1:
            raise OSError(errno.EMLINK, "a hard link (another file's contents); not written",
                          str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_own(path: Path):
    """``path`` opened for binary reading; see :func:`open_fd`."""
    return os.fdopen(open_fd(path), "rb")


def read_own(path: Path, limit: int = JSON_LIMIT) -> bytes:
    """The bytes of a regular file of the state (OSError if it is not one, or over ``limit``)."""
    with open_own(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise OSError(errno.EFBIG, f"{size} bytes, more than a state's file holds",
                          str(path))
        return f.read(limit + 1)[:limit]


#: Parsed ``.npy`` headers by their bytes: a state's samples share a handful of them.
_HEADERS: Dict[bytes, Tuple[Tuple[int, ...], bool, np.dtype]] = {}
MAX_SAMPLE_BYTES = 16 << 20  # a sample's views (8 KB for two 1,024-d ones; 64 zoomed crops of 4,096-d: 1 MB)
_FIRST_READ = 1 << 16  # a sample's file is read in one go up to this (8 KB for two 1,024-d views)


def _npy_header(data: bytes) -> Tuple[Tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of the ``.npy`` whose first bytes are
    ``data``; ValueError if it is not one we write."""
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy file (no magic)")
    version = (data[6], data[7])
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format {version} is not one we write")
    if version == (1, 0):
        offset = 10 + int.from_bytes(data[8:10], "little")
    else:
        offset = 12 + int.from_bytes(data[8:12], "little") if len(data) >= 12 else len(data) + 1
    if offset > len(data):
        raise ValueError(f"truncated .npy header ({len(data)} bytes, its header needs {offset})")
    header = data[:offset]
    parsed = _HEADERS.get(header)
    if parsed is None:
        f = io.BytesIO(header)
        np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        parsed = read(f)
        if len(_HEADERS) < 64:
            _HEADERS[header] = parsed
    shape, fortran, dtype = parsed
    return shape, fortran, dtype, offset


def load_views(path: Path) -> np.ndarray:
    """One sample's VxD float32 views from its ``.npy``; ValueError or OSError if the file is
    not one (its header is checked against its size first, so a corrupt or hostile header
    never makes the array allocate more than the file holds). The file is read in one call
    and its header parsed once per distinct header (a 10,000-sample state opens in a tenth of
    the time ``np.load`` took)."""
    fd = open_fd(path)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, min(size, _FIRST_READ))
        try:
            shape, fortran, dtype, offset = _npy_header(data)
        except (SyntaxError, struct_error) as exc:
            raise ValueError(f"not an .npy header ({exc})") from None
        if len(shape) != 2 or shape[0] < 1 or dtype.kind != "f" or dtype.hasobject:
            raise ValueError(f"not a VxD float array ({dtype}, shape {shape})")
        if math.prod(shape) * dtype.itemsize > MAX_SAMPLE_BYTES:
            raise ValueError(f"header says {shape} of {dtype}: more than a sample holds")
        if math.prod(shape) * dtype.itemsize != size - offset:
            raise ValueError(f"header says {shape}, the file holds {size - offset} bytes")
        while len(data) < size:  # a big sample (many views): the rest
            more = os.read(fd, size - len(data))
            if not more:
                raise EOFError("the file shrank while it was read")
            data += more
    finally:
        os.close(fd)
    views = np.frombuffer(data, dtype, offset=offset).reshape(shape, order="F" if fortran else "C")
    views = views.astype(np.float32)  # an array of its own (and writable), float32
    if not np.isfinite(views).all():
        raise ValueError("holds NaN or infinity")
    return views


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn a full or read-only disk into a clear :class:`StoreError`."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, StoreError):
            raise
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(f"disk full: {what} was not stored") from None
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise ReadOnlyStoreError(f"cannot write the state directory ({exc.strerror}): "
                                     f"{what} was not stored") from None
        raise StoreError(f"{what} failed: {exc}") from None


def new_id(after: str) -> str:
    """A sample id later than ``after`` in sort order (clock going back or not)."""
    now = time.time_ns()
    if after:
        now = max(now, int(after[:16], 16) + 1)
    return f"{now:016x}{secrets.token_hex(2)}"


def read_meta(root: Path) -> Optional[dict]:
    """``store.json`` of a state directory as a dict, or None if missing or unreadable."""
    try:
        meta = json.loads(read_own(Path(root) / META).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def meta_text(backbone: Optional[dict], head: Optional[str],
              classes: "OrderedDict[str, str]") -> str:
    """``store.json``'s text: format, backbone, head, then one class per line."""
    listed = ",\n ".join(json.dumps({"name": n, "dir": d}, ensure_ascii=False)
                         for n, d in classes.items())
    meta = json.dumps({"format": FORMAT, "backbone": backbone, "head": head},
                      ensure_ascii=False)
    return meta[:-1] + (f', "classes": [\n {listed}\n]}}\n' if listed else ', "classes": []}\n')


def check_backbone(root: Path, stored: Optional[dict], backbone: Optional[dict]) -> None:
    """StoreError if the samples were embedded by another backbone than ``backbone``."""
    if not backbone or not stored:
        return
    if stored.get("sha256") != backbone.get("sha256"):
        if stored.get("model") == backbone.get("model"):
            raise StoreError(
                f"{root} holds samples embedded with another copy of {stored.get('model')} "
                f"(SHA-256 {str(stored.get('sha256'))[:12]}…, the installed file is "
                f"{str(backbone.get('sha256'))[:12]}…); restore that model file, or use "
                "another --state")
        raise StoreError(
            f"{root} holds samples embedded with {stored.get('model')}, not "
            f"{backbone.get('model')}; use --model {stored.get('model')} or another --state")
    if stored.get("resize") != backbone.get("resize"):
        raise StoreError(f"{root} holds samples preprocessed with resize="
                         f"{stored.get('resize')}, not {backbone.get('resize')}")
    if stored.get("crop") != backbone.get("crop"):
        def region(crop):
            return (f"source.crop = [{', '.join(f'{v:g}' for v in crop)}]"
                    if isinstance(crop, list) else "the whole frame (no source.crop)")
        raise StoreError(f"{root} holds samples taught on {region(stored.get('crop'))}, not "
                         f"{region(backbone.get('crop'))}; set source.crop back, or use another "
                         "state directory for this region")


def safe_folder(name: object) -> bool:
    """A class folder name is one plain path component of our own making: nothing that
    ``store.json`` says can lead outside ``samples/``."""
    return isinstance(name, str) and FOLDER.fullmatch(name) is not None




def jpeg_thumbnail(rgb: np.ndarray, short_side: int) -> bytes:
    """A JPEG of a frame whose short side is at most ``short_side`` pixels."""
    image = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    scale = short_side / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def clean_leftovers(root: Path) -> None:
    """Remove what a crash left: the folders of explicit deletions under way, temp files."""
    samples_dir = root / SAMPLES
    for entry in samples_dir.iterdir():
        if entry.name.startswith(TRASH_PREFIX) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
    atomic.remove_stale_temps(samples_dir)
    atomic.remove_stale_temps(root)  # a crash while saving the class list or the head


def holds_samples(samples_dir: Path) -> bool:
    """Whether any class folder of ``samples_dir`` holds a sample file (readable or not)."""
    if not samples_dir.is_dir():
        return False
    for folder in samples_dir.iterdir():
        if folder.name.startswith(TRASH_PREFIX) or folder.is_symlink() or not folder.is_dir():
            continue
        if next(folder.glob("*.npy"), None) is not None:
            return True
    return False


def unlisted_folders(samples_dir: Path, listed: set,
                     problems: List[str]) -> List[Tuple[str, Path, int]]:
    """(class name, folder, sample count) of every class folder the list does not mention;
    folders without a readable ``name`` file are reported and left as they are."""
    found = []
    if not samples_dir.is_dir():
        return found
    for folder in sorted(samples_dir.iterdir()):
        if folder.name in listed or not safe_folder(folder.name) or folder.is_symlink() \
                or not folder.is_dir():
            continue
        try:
            name = validate_class_name(read_own(folder / "name", 4096).decode("utf-8"))
        except (ValueError, OSError) as exc:
            problems.append(f"{folder}: a class folder without a readable name file ({exc}); "
                            "left as it is")
            continue
        found.append((name, folder, len(list(folder.glob("*.npy")))))
    return found


def load_class_folder(path: Path, name: str, dim: Optional[int], readonly: bool,
                      problems: List[str], convert=None
                      ) -> Tuple["OrderedDict[str, np.ndarray]", Optional[int]]:
    """The samples of one class folder (id -> VxD views, or ``convert(views)`` of each as it
    is read: no float32 copy of a whole class at once) and the embedding size seen; bad
    samples are skipped and reported, symbolic links never followed."""
    loaded: "OrderedDict[str, np.ndarray]" = OrderedDict()
    if path.is_symlink():
        problems.append(f"{path}: a symbolic link, not a class folder; class {name!r} is read "
                        "as empty")
        return loaded, dim
    if not path.is_dir():
        if not readonly:
            with contextlib.suppress(OSError):
                path.mkdir(parents=True)
                atomic.write_text(path / "name", name)
        return loaded, dim
    if not readonly:
        atomic.remove_stale_temps(path)
    for npy in sorted(path.glob("*.npy")):
        if npy.is_symlink():
            problems.append(f"{npy}: a symbolic link; skipped")
            continue
        try:
            views = read_sample(npy, dim)
            dim = dim or views.shape[1]
        except (ValueError, OSError, EOFError, MemoryError) as exc:
            problems.append(f"{npy}: unreadable sample skipped ({exc})")
            continue
        loaded[npy.stem] = views if convert is None else convert(views)
    if not readonly:
        for jpg in path.glob("*.jpg"):  # the thumbnail of a capture that never landed
            if jpg.stem not in loaded and not (path / f"{jpg.stem}.npy").exists():
                jpg.unlink(missing_ok=True)
    return loaded, dim


def list_class_folder(path: Path, name: str,
                      problems: List[str]) -> "OrderedDict[str, None]":
    """The sample ids of one class folder, in :func:`load_class_folder`'s order, without reading
    them (a read-only store reads a sample when it is first needed): regular ``.npy`` files
    only, symbolic links and FIFOs skipped and reported as :func:`load_class_folder` does."""
    listed: "OrderedDict[str, None]" = OrderedDict()
    if path.is_symlink():
        problems.append(f"{path}: a symbolic link, not a class folder; class {name!r} is read "
                        "as empty")
        return listed
    try:
        entries = sorted((e for e in os.scandir(path) if e.name.endswith(".npy")),
                         key=lambda e: e.name)
    except OSError:  # missing or not a folder: no samples
        return listed
    for entry in entries:
        npy = path / entry.name
        try:
            if entry.is_symlink():
                problems.append(f"{npy}: a symbolic link; skipped")
                continue
            if not entry.is_file(follow_symlinks=False):
                raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or folder)")
        except OSError as exc:
            problems.append(f"{npy}: unreadable sample skipped ({exc.strerror or exc})")
            continue
        listed[npy.stem] = None
    return listed


def read_sample(path: Path, dim: Optional[int]) -> np.ndarray:
    """One sample's views, as :func:`load_class_folder` checks them (ValueError, OSError)."""
    views = load_views(path)
    if dim and views.shape[1] != dim:
        raise ValueError(f"{views.shape[1]}-d, expected {dim}-d")
    return views


def names_from_folders(samples_dir: Path, classes: "OrderedDict[str, str]", readonly: bool,
                       problems: List[str]) -> "Tuple[OrderedDict[str, str], bool]":
    """The class list (name -> folder) with each listed folder named by its own ``name`` file,
    and whether that changed a name.

    The folders are the data and ``store.json`` their index: a rename writes the ``name``
    file first, then the list, so after a kill between the two the name file is the newer
    word (the rename is finished), and a list that names folders wrongly (swapped, edited)
    cannot relabel samples. A name file that is missing, unreadable, or claims a class
    another folder holds is written back from the list (unless read-only).
    """
    said: Dict[str, Optional[str]] = {}
    for folder in classes.values():
        try:
            said[folder] = validate_class_name(read_own(samples_dir / folder / "name", 4096)
                                               .decode("utf-8"))
        except (OSError, ValueError):
            said[folder] = None
    listed = {folder: name for name, folder in classes.items()}
    final = {folder: said[folder] or name for folder, name in listed.items()}
    while True:  # two folders may not end as one class: those that clash keep the list's name
        keys = Counter(class_key(n) for n in final.values())
        clash = [f for f, n in final.items() if keys[class_key(n)] > 1 and n != listed[f]]
        if not clash:
            break
        for folder in clash:
            final[folder] = listed[folder]
    renamed: "OrderedDict[str, str]" = OrderedDict()
    for folder, name in listed.items():
        new = final[folder]
        if new != name:
            problems.append(f"{samples_dir / folder}: its name file says {new!r}, the class "
                            f"list {name!r} (a rename that did not finish?); named {new!r}")
        elif said[folder] != name:
            if said[folder] is not None:
                problems.append(f"{samples_dir / folder}: its name file says "
                                f"{said[folder]!r}, a class another folder holds; kept {name!r}")
            if not readonly and not (samples_dir / folder).is_symlink() and \
                    (samples_dir / folder).is_dir():
                with contextlib.suppress(OSError):
                    atomic.write_text(samples_dir / folder / "name", name)
        renamed[new] = folder
    return renamed, list(renamed) != list(classes)
