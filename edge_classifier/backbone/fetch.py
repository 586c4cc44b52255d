"""Download models and sample files into the data directory, verified and atomically.

Each file is streamed into a temporary file beside its destination while its SHA-256 is
computed; only a file with the manifest's checksum is renamed into place, so a partial or
corrupt download is never installed. ``mirror`` (or ``$EDGE_CLASSIFIER_MODEL_MIRROR``) names a
local folder holding the same files by name, for offline installs::

    fetch(["mobilenet_v2_1.0_224_quant"], mirror="/media/usb/mirror")
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, List, Optional

from edge_classifier.core import atomic
from edge_classifier.errors import ChecksumError, FetchError, ModelNotInstalledError
from edge_classifier.backbone.manifest import Entry, Manifest, load_manifest
from edge_classifier.core.paths import MIRROR_ENV, models_dir

CHUNK = 1 << 16
TIMEOUT_S = 30


def sha256_of(path: os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def installed_path(entry: Entry, dest: Optional[Path] = None) -> Path:
    return Path(dest or models_dir()) / entry.file


def is_installed(entry: Entry, dest: Optional[Path] = None, verify: bool = False) -> bool:
    path = installed_path(entry, dest)
    if not path.is_file():
        return False
    return sha256_of(path) == entry.sha256 if verify else True


def require(name: str, dest: Optional[Path] = None, manifest: Optional[Manifest] = None) -> Path:
    """Path of an installed file, or a :class:`ModelNotInstalledError` saying how to fetch it."""
    entry = (manifest or load_manifest()).get(name)
    path = installed_path(entry, dest)
    if not path.is_file():
        raise ModelNotInstalledError(
            f"{entry.name} is not installed in {path.parent}; run "
            f"'edge-classifier models fetch {entry.name}' (add --mirror DIR for an offline copy)"
        )
    return path


def _open_source(entry: Entry, mirror: Optional[Path]):
    """A binary stream of the file and its size (or None), from the mirror or the network."""
    if mirror is not None:
        src = Path(mirror) / entry.file
        if not src.is_file():
            raise FetchError(f"{entry.name}: {entry.file} is not in the mirror folder {mirror}")
        return open(src, "rb"), src.stat().st_size
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


def fetch_one(entry: Entry, dest: Path, mirror: Optional[Path] = None,
              progress: Optional[Callable] = None) -> Path:
    """Install one file into ``dest``; returns its path. Never leaves a partial file installed."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / entry.file
    digest = hashlib.sha256()
    source, size = _open_source(entry, mirror)
    bar = progress(total=size, desc=entry.file) if progress else None
    try:
        with contextlib.closing(source), atomic.atomic_writer(target) as out:
            try:
                for block in iter(lambda: source.read(CHUNK), b""):
                    digest.update(block)
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
            except (OSError, socket.timeout) as exc:
                raise FetchError(f"{entry.name}: download interrupted ({exc}); run the fetch "
                                 "again") from exc
            if digest.hexdigest() != entry.sha256:
                raise ChecksumError(
                    f"{entry.name}: checksum mismatch (got {digest.hexdigest()}, expected "
                    f"{entry.sha256}); the file was not installed. The source is corrupt or not "
                    "the file the manifest names: fetch again or replace the mirror's copy"
                )
    finally:
        if bar is not None:
            bar.close()
    return target


def fetch(names: Optional[Iterable[str]] = None, mirror: Optional[os.PathLike] = None,
          dest: Optional[os.PathLike] = None, manifest: Optional[Manifest] = None,
          progress: Optional[Callable] = None, log: Callable[[str], None] = lambda s: None,
          ) -> List[Path]:
    """Install ``names`` (default: everything in the manifest) and the label files they need.

    Files already installed with the right checksum are kept. ``mirror`` defaults to
    ``$EDGE_CLASSIFIER_MODEL_MIRROR``. Raises :class:`FetchError` after trying every file if
    any of them failed (the message lists them all).
    """
    manifest = manifest or load_manifest()
    dest_dir = Path(dest) if dest else models_dir()
    if mirror is None and os.environ.get(MIRROR_ENV):
        mirror = os.environ[MIRROR_ENV]
    mirror_dir = Path(mirror).expanduser() if mirror else None
    if mirror_dir is not None and not mirror_dir.is_dir():
        raise FetchError(f"mirror folder {mirror_dir} does not exist")
    wanted = list(names) if names else [e.name for e in manifest.entries]
    entries = manifest.with_dependencies(wanted)
    installed, failures = [], []
    atomic.remove_stale_temps(dest_dir)
    for entry in entries:
        if is_installed(entry, dest_dir, verify=True):
            log(f"{entry.name}: already installed")
            installed.append(installed_path(entry, dest_dir))
            continue
        try:
            installed.append(fetch_one(entry, dest_dir, mirror_dir, progress))
            log(f"{entry.name}: installed in {dest_dir}")
        except FetchError as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise FetchError(f"{len(failures)} files failed:\n  "
                         + "\n  ".join(str(f) for f in failures))
    return installed

