"""Is an installed file the one the manifest names? Its size and SHA-256, hashed once per change.

Every load checks the size against the manifest (one ``stat``) and the SHA-256. Hashing a 4 MB
model on every start is slow on a Pi Zero, so each digest is remembered in :data:`CACHE_NAME`
in the models folder, keyed by the file's size, modification time, change time and inode: a file
is hashed again only after something wrote to it, replaced it or touched it::

    checks = check_files(manifest.with_dependencies(["mobilenet_v2_1.0_224_quant"]), folder)
    [(c.entry.name, c.status) for c in checks]  # [('mobilenet_v2_1.0_224_quant', 'installed'),
                                                #  ('imagenet_labels.txt', 'installed')]
    model, labels = verify(manifest.with_dependencies(["mobilenet_v2_1.0_224_quant"]), folder)

:func:`verify` raises :class:`~edge_classifier.errors.ModelModifiedError` for a file that differs
from the manifest, naming it and the command that replaces it. The cache is only a shortcut: a
missing, corrupt or foreign cache means hashing again, and a folder that cannot be written (a
read-only image) means hashing on every start, nothing worse. Files loaded by path, not by a
manifest name, are never checked here.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from edge_classifier.backbone.manifest import Entry
from edge_classifier.core import atomic
from edge_classifier.core.paths import models_dir
from edge_classifier.errors import ModelError, ModelModifiedError, ModelNotInstalledError

CACHE_NAME = ".verified.json"
CACHE_VERSION = 1
CHUNK = 1 << 16

INSTALLED = "installed"  # present, with the manifest's size and SHA-256
MISSING = "missing"  # not fetched
MODIFIED = "modified"  # present, but not the file the manifest names
UNREADABLE = "unreadable"  # present, but it cannot be read (permissions, I/O error)


def sha256_of(path: "os.PathLike[str] | str") -> str:
    """The hex SHA-256 of a file, read in 64 KiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> List[int]:
    """What must stay the same for a remembered digest to still hold."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class DigestCache:
    """The remembered SHA-256 of each file in one folder, saved as :data:`CACHE_NAME` there::

        cache = DigestCache(folder)
        cache.lookup("cat.bmp", (folder / "cat.bmp").stat())  # the digest, or None
        cache.remember("cat.bmp", (folder / "cat.bmp").stat(), digest)
        cache.save()  # atomic; silently skipped where the folder cannot be written
    """

    def __init__(self, folder: "os.PathLike[str] | str"):
        self.folder = Path(folder)
        self.path = self.folder / CACHE_NAME
        self._files = self._read()
        self._changed: Dict[str, dict] = {}

    def _read(self) -> Dict[str, dict]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):  # absent, unreadable or not JSON: start afresh
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        files = data.get("files")
        return {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(
            files, dict) else {}

    def lookup(self, name: str, st: os.stat_result) -> Optional[str]:
        """The digest remembered for ``name`` if the file is unchanged since, else None."""
        record = self._changed.get(name) or self._files.get(name)
        if record and record.get("stamp") == _stamp(st) and isinstance(record.get("sha256"), str):
            return record["sha256"]
        return None

    def remember(self, name: str, st: os.stat_result, digest: str) -> None:
        record = {"stamp": _stamp(st), "sha256": digest}
        if self._files.get(name) != record:
            self._changed[name] = record

    def save(self) -> None:
        """Write what was learnt, merged with what another process may have saved meanwhile."""
        if not self._changed:
            return
        files = {**self._read(), **self._changed}
        files = {name: r for name, r in files.items() if (self.folder / name).is_file()}
        text = json.dumps({"version": CACHE_VERSION, "files": files}, sort_keys=True)
        try:
            atomic.write_text(self.path, text + "\n")
        except OSError:
            return  # read-only or full: the files are simply hashed again next time
        self._files, self._changed = files, {}


@dataclass(frozen=True)
class FileCheck:
    """The state of one manifest file in a models folder."""

    entry: Entry
    path: Path
    status: str  # INSTALLED, MISSING, MODIFIED or UNREADABLE
    problem: str = ""  # what is wrong, for MODIFIED and UNREADABLE
    hashed: bool = False  # the file was read and hashed (False: answered by stat and the cache)

    @property
    def ok(self) -> bool:
        return self.status == INSTALLED

    def error(self) -> ModelError:
        """The exception that says what is wrong and how to fix it (only when not :attr:`ok`)."""
        fix = f"run 'edge-classifier models fetch {self.entry.name}'"
        if self.status == MISSING:
            return ModelNotInstalledError(
                f"{self.entry.name} is not installed in {self.path.parent}; {fix} "
                "(add --mirror DIR for an offline copy)")
        if self.status == MODIFIED:
            return ModelModifiedError(
                f"{self.path} is not the file the manifest names ({self.problem}): it changed "
                f"after it was fetched; {fix} to replace it")
        return ModelError(f"{self.path}: cannot read it ({self.problem}); check its "
                          f"permissions, or {fix} to replace it")


def _check(entry: Entry, folder: Path, cache: DigestCache) -> FileCheck:
    path = folder / entry.file
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return FileCheck(entry, path, MISSING)
    except OSError as exc:
        return FileCheck(entry, path, UNREADABLE, exc.strerror or str(exc))
    if not stat.S_ISREG(st.st_mode):
        return FileCheck(entry, path, MODIFIED, "not a regular file")
    if entry.size is not None and st.st_size != entry.size:
        return FileCheck(entry, path, MODIFIED,
                         f"{st.st_size} bytes, the manifest says {entry.size}")
    digest, hashed = cache.lookup(entry.file, st), False
    if digest is None:
        try:
            digest, hashed = sha256_of(path), True
            after = path.stat()
        except OSError as exc:
            return FileCheck(entry, path, UNREADABLE, exc.strerror or str(exc))
        if _stamp(after) == _stamp(st):  # not written to while it was read
            cache.remember(entry.file, st, digest)
    if digest != entry.sha256:
        return FileCheck(entry, path, MODIFIED,
                         f"SHA-256 {digest[:12]}..., the manifest says {entry.sha256[:12]}...",
                         hashed)
    return FileCheck(entry, path, INSTALLED, "", hashed)


def check_files(entries: Iterable[Entry],
                folder: "os.PathLike[str] | str | None" = None) -> List[FileCheck]:
    """The state of each entry's file in ``folder`` (default: the data directory's models)."""
    folder = Path(folder) if folder is not None else models_dir()
    cache = DigestCache(folder)
    try:
        return [_check(entry, folder, cache) for entry in entries]
    finally:
        cache.save()


def verify(entries: Iterable[Entry],
           folder: "os.PathLike[str] | str | None" = None) -> List[Path]:
    """The paths of the entries' files, each checked; raises the first problem found.

    :raises ModelNotInstalledError: a file was never fetched.
    :raises ModelModifiedError: a file differs from the manifest (size or SHA-256).
    :raises ModelError: a file cannot be read.
    """
    checks = check_files(entries, folder)
    for check in checks:
        if not check.ok:
            raise check.error()
    return [c.path for c in checks]
