"""Download models and sample files into the data directory, verified and atomically.

Each file is streamed into a temporary file beside its destination while its SHA-256 is
computed; only a file with the manifest's checksum is renamed into place, so a partial or
corrupt download is never installed. Files already installed are checked by
:mod:`~edge_classifier.backbone.integrity` (size, and a SHA-256 hashed once per change); a
modified one is replaced. ``mirror`` (or ``$EDGE_CLASSIFIER_MODEL_MIRROR``) names a
local folder holding the same files by name, for offline installs::

    fetch(["mobilenet_v2_1.0_224_quant"], mirror="/media/usb/mirror")
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional

from edge_classifier.backbone import integrity
from edge_classifier.backbone.manifest import Entry, Manifest, load_manifest
from edge_classifier.core import atomic
from edge_classifier.core.paths import HOME_ENV, MIRROR_ENV, models_dir
from edge_classifier.errors import ChecksumError, FetchError

CHUNK = 1 << 16
TIMEOUT_S = 30


def installed_path(entry: Entry, dest: Optional[Path] = None) -> Path:
    return Path(dest or models_dir()) / entry.file


def _open_source(entry: Entry, mirror: Optional[Path]):
    """A binary stream of the file and its size (or None), from the mirror or the network."""
    if mirror is not None:
        src = Path(mirror) / entry.file
        if not src.is_file():
            raise FetchError(f"{entry.name}: {entry.file} is not in the mirror folder {mirror}")
        try:
            return open(src, "rb"), src.stat().st_size
        except OSError as exc:
            raise FetchError(f"{entry.name}: cannot read {src} ({exc.strerror or exc})") from None
    try:
        request = urllib.request.Request(entry.url, headers={"User-Agent": "edge-classifier"})
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (https URL)
    except (urllib.error.URLError, socket.timeout, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(
            f"{entry.name}: cannot download {entry.url} ({reason}); check the network, or copy "
            f"the files to a folder and use --mirror DIR (or ${MIRROR_ENV})"
        ) from exc
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def _blocks(source, entry: Entry) -> Iterator[bytes]:
    """The source's content in blocks; a failed read is a :class:`FetchError`."""
    while True:
        try:
            block = source.read(CHUNK)
        except (OSError, socket.timeout, http.client.HTTPException) as exc:
            raise FetchError(f"{entry.name}: download interrupted ({exc}); run the fetch "
                             "again") from exc
        if not block:
            return
        yield block


def writable_folder(folder: Path) -> None:
    """Create ``folder`` if need be and prove a file can be made in it, else one FetchError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents)
                        if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            reason, fix = f"{blocker} is a file, not a folder", f"move {blocker} away"
        else:
            reason, fix = exc.strerror or str(exc), "make it writable"
        raise FetchError(f"cannot write to the models folder {folder} ({reason}); {fix}, or set "
                         f"{HOME_ENV} to a folder you can write") from None


def fetch_one(entry: Entry, dest: Path, mirror: Optional[Path] = None,
              progress: Optional[Callable] = None) -> Path:
    """Install one file into the existing folder ``dest``; returns its path. Never leaves a
    partial file installed."""
    target = dest / entry.file
    digest = hashlib.sha256()
    size = 0
    source, length = _open_source(entry, mirror)
    bar = progress(total=length, desc=entry.file) if progress else None
    try:
        with contextlib.closing(source), atomic.atomic_writer(target) as out:
            for block in _blocks(source, entry):
                digest.update(block)
                size += len(block)
                if entry.size is not None and size > entry.size:
                    raise ChecksumError(
                        f"{entry.name}: larger than the manifest's {entry.size} bytes; the file "
                        "was not installed. The source is not the file the manifest names")
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
            if digest.hexdigest() != entry.sha256:
                raise ChecksumError(
                    f"{entry.name}: checksum mismatch (got {digest.hexdigest()}, expected "
                    f"{entry.sha256}); the file was not installed. The source is corrupt or not "
                    "the file the manifest names: fetch again or replace the mirror's copy"
                )
    except FetchError:
        raise
    except OSError as exc:  # writing: the disk is full, or a folder is where the file goes
        raise FetchError(f"{entry.name}: cannot write {target} ({exc.strerror or exc}); nothing "
                         f"was installed. Free some space, or set {HOME_ENV} to another "
                         "folder") from None
    finally:
        if bar is not None:
            bar.close()
    return target


def fetch(names: Optional[Iterable[str]] = None, mirror: Optional[os.PathLike] = None,
          dest: Optional[os.PathLike] = None, manifest: Optional[Manifest] = None,
          progress: Optional[Callable] = None, log: Callable[[str], None] = lambda s: None,
          ) -> List[Path]:
    """Install ``names`` (default: everything in the manifest) and the label files they need.

    Files already installed with the manifest's size and SHA-256 are kept; modified ones are
    replaced. ``mirror`` defaults to ``$EDGE_CLASSIFIER_MODEL_MIRROR``. Raises
    :class:`FetchError` at once if the folder cannot be written, else after trying every file
    if any of them failed (the message lists them all).
    """
    manifest = manifest or load_manifest()
    dest_dir = Path(dest) if dest else models_dir()
    if mirror is None and os.environ.get(MIRROR_ENV):
        mirror = os.environ[MIRROR_ENV]
    mirror_dir = Path(mirror).expanduser() if mirror else None
    if mirror_dir is not None and not mirror_dir.is_dir():
        raise FetchError(f"mirror folder {mirror_dir} does not exist")
    wanted = list(names) if names else [e.name for e in manifest.entries]
    checks = integrity.check_files(manifest.with_dependencies(wanted), dest_dir)
    if not all(c.ok for c in checks):
        writable_folder(dest_dir)
        atomic.remove_stale_temps(dest_dir)
    installed, failures = [], []
    cache = integrity.DigestCache(dest_dir)
    for check in checks:
        entry = check.entry
        if check.ok:
            log(f"{entry.name}: already installed")
            installed.append(check.path)
            continue
        if check.status != integrity.MISSING:
            log(f"{entry.name}: {check.status} ({check.problem}); replacing it")
        try:
            path = fetch_one(entry, dest_dir, mirror_dir, progress)
        except FetchError as exc:
            failures.append(exc)
            continue
        with contextlib.suppress(OSError):
            cache.remember(entry.file, path.stat(), entry.sha256)
        installed.append(path)
        log(f"{entry.name}: installed in {dest_dir}")
    cache.save()
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise FetchError(f"{len(failures)} files failed:\n  "
                         + "\n  ".join(str(f) for f in failures))
    return installed
