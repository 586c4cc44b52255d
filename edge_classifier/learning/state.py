"""The state directory: the one owner of everything the device has learned.

Every file in a state directory is read and written here (or, for the class list and the
samples, by the :class:`~edge_classifier.learning.store.SampleStore` this opens), so the CLI
and the device ask the same questions and get the same answers::

    with StateDir("/var/lib/edge-classifier/state", command="train") as state:  # exclusive
        state.model_name(), state.head_name()      # what this state was taught with
        store = state.open_store(backbone.identity)

    state = StateDir(root, write=False)            # read-only: predict, export, eval
    state.exists()                                 # never creates anything

Layout::

    store.json           classes (label order), the backbone, the head name   (SampleStore)
    samples/<dir>/       one folder per class: <id>.npy, <id>.jpg, name       (SampleStore)
    head.npz, head.json  the fitted head; rebuildable from the samples
    imports.jsonl        which data-set files ``train`` stored, one line per file, written
                         before the sample, so an interrupted import resumes exactly
    config.last-good.toml  the last config ``run`` started with successfully
    inbox/               unsure frames kept for filing into a class           (Inbox)
    fleet.json           the fleet's replicated state: class ids, clocks, tombstones, what
                         the store held at the last sync, peers' sequence numbers
    lock                 held (``flock``) by the process that changes the state

A process that changes the state holds ``lock`` exclusively: an advisory lock the OS releases
when the process dies, so a kill never leaves it stuck. A second writer gets a
:class:`~edge_classifier.errors.StateLockedError` naming the holder (PID and command).
Read-only users take no lock and write nothing.

Whatever the files inside it are, nothing outside the state is read, written or deleted: no
file is read through a symbolic link or from a FIFO or device, nor appended to through a hard
link (:func:`~edge_classifier.learning.store_disk.open_fd`); a lock or ``samples/`` that is
one is refused with a message saying so, and the rest is rebuilt from the samples.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from edge_classifier.core import atomic
from edge_classifier.errors import HeadLoadError, StateLockedError, StoreError
from edge_classifier.learning.inbox import Inbox
from edge_classifier.learning.npzfile import read_npz, write_npz
from edge_classifier.learning.store import META, SampleStore, read_meta, storage_errors
from edge_classifier.learning.store_disk import open_fd, open_own, read_own

HEAD_ARRAYS = "head.npz"
HEAD_META = "head.json"
IMPORTS = "imports.jsonl"
LEGACY_IMPORTS = "imports.json"
LAST_GOOD = "config.last-good.toml"
INBOX = "inbox"
FLEET = "fleet.json"
LOCK = "lock"
ARRAYS_DIGEST = "arrays_crc32"  # in head.json: which head.npz it was saved with
LEGACY_DIGEST = "arrays_sha256"  # the same, as saved before 2026-12 (SHA-256: 96 ms at 38 MB)
IMPORTS_LIMIT = 1 << 30  # an import list of millions of files is still read


class StateLock:
    """Exclusive advisory locks on the state directory itself and on ``<root>/lock``, which
    holds the owner's PID and command.

    The folder's lock cannot be lost by deleting or replacing the ``lock`` file (a clean-up
    script, a hand); the file's is the one older versions take. ``acquire()`` raises
    :class:`StateLockedError` when another process holds either. Where locks cannot be taken
    (a file system without them, a read-only state without a lock file) they are skipped and
    ``held`` stays False: nothing can change such a state anyway, or nothing better can be done.
    """

    def __init__(self, root: Path, command: str):
        self.path = Path(root) / LOCK
        self.command = command
        self._fds: List[int] = []

    @property
    def held(self) -> bool:
        return bool(self._fds)

    def acquire(self) -> None:
        if self._fds:
            return
        held: List[int] = []
        try:
            folder = self._open_folder()
            if folder is not None:
                held.append(folder) if self._lock(folder) else os.close(folder)
            file = self._open_file()
            if file is not None and not self._lock(file):
                os.close(file)
                file = None
        except BaseException:
            for fd in held:
                os.close(fd)
            raise
        self._fds = held + ([file] if file is not None else [])
        if file is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(file, 0)
                os.write(file, json.dumps({"pid": os.getpid(), "command": self.command}).encode())

    def _open_folder(self) -> Optional[int]:
        try:
            return os.open(self.path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) |
                           getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None

    def _open_file(self) -> Optional[int]:
        # a read-only state: lock the existing file, or go without
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
            try:
                return open_fd(self.path, flags)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EINVAL, errno.EMLINK):
                    raise StoreError(f"{self.path}: {exc.strerror}; the state's lock must be "
                                     "a plain file: remove it and start again") from None
        return None

    def _lock(self, fd: int) -> bool:
        """True if locked, False where locks are not supported; StateLockedError if held."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            os.close(fd)
            raise StateLockedError(
                f"{self.path.parent} is in use by {self._holder()}; stop it first (for a "
                "service: sudo systemctl stop edge-classifier), or teach the running device "
                "through its commands (MQTT cmd/capture, buttons) instead of a second "
                "process") from None
        except OSError:
            return False  # a file system without locks: nothing better to do

    def _holder(self) -> str:
        try:
            info = json.loads(read_own(self.path, 4096).decode("utf-8"))
            return f"PID {int(info['pid'])} ({str(info['command'])[:80]})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # closing releases the flock; the file stays (others may wait on it)


class StateDir:
    """A state directory, opened for writing (locked; the default) or read-only.

    :param command: what the owning process is, shown to a second process that finds the
        state locked (``"edge-classifier run"``).
    :param write: False for read-only users; nothing is created, locked or written.
    """

    def __init__(self, root: "os.PathLike[str] | str", *, write: bool = True,
                 command: str = "edge-classifier"):
        self.root = Path(root).expanduser()
        self.write = write
        self.problems: List[str] = []
        self._lock = StateLock(self.root, command)
        if write:
            with storage_errors("the state directory"):
                self.root.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the lock. Safe to call twice."""
        self._lock.release()

    def __del__(self) -> None:  # a forgotten state must not keep others out
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> "StateDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- questions -----------------------------------------------------------------------------
    def exists(self) -> bool:
        """True when the folder holds a state (class list or samples), without creating one."""
        return (self.root / META).is_file() or (self.root / "samples").is_dir()

    def model_name(self) -> Optional[str]:
        """The model this state's samples were embedded with, if any."""
        backbone = (read_meta(self.root) or {}).get("backbone") or {}
        name = backbone.get("model") if isinstance(backbone, dict) else None
        return name if isinstance(name, str) and name else None

    def crop(self) -> Optional[list]:
        """The region of interest (``source.crop``) this state's samples were taught on, if
        any: commands that read pictures (``train``, ``predict``) use the state's."""
        backbone = (read_meta(self.root) or {}).get("backbone") or {}
        crop = backbone.get("crop") if isinstance(backbone, dict) else None
        return crop if isinstance(crop, list) else None

    def head_name(self) -> Optional[str]:
        """The head this state was last taught with (e.g. ``multilabel``), if any: the class
        list remembers it, and a saved head says it too."""
        name = (read_meta(self.root) or {}).get("head")
        if isinstance(name, str) and name:
            return name
        meta = self._head_meta()
        ours = meta.get("edge_classifier") if isinstance(meta, dict) else None
        name = ours.get("head") if isinstance(ours, dict) else None
        return name if isinstance(name, str) and name else None

    def open_store(self, backbone: Optional[dict] = None, *, thumbnail_size: int = 224,
                   max_classes: Optional[int] = None, head: Optional[str] = None) -> SampleStore:
        """The class list and samples (read-only when this state is)."""
        store = SampleStore(self.root, backbone=backbone, thumbnail_size=thumbnail_size,
                            readonly=not self.write, max_classes=max_classes, head=head)
        self.problems.extend(store.problems)
        return store

    def open_inbox(self, limit: int = 50) -> Inbox:
        """The frames kept for filing into a class (:mod:`~edge_classifier.learning.inbox`)."""
        return Inbox(self.root / INBOX, limit, readonly=not self.write)

    # -- the head ------------------------------------------------------------------------------
    def _head_meta(self) -> Optional[dict]:
        try:
            return json.loads(read_own(self.root / HEAD_META).decode("utf-8"))
        except (OSError, ValueError):
            return None

    def load_head_files(self) -> Optional[Tuple[Dict[str, np.ndarray], dict]]:
        """(arrays, metadata) of the saved head; None if none, or if the two files are not
        of one save (read while a save was under way, or left so by a kill between the two
        writes: the head is refitted); HeadLoadError if unusable."""
        meta_path, arrays_path = self.root / HEAD_META, self.root / HEAD_ARRAYS
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(read_own(meta_path).decode("utf-8"))
            if not isinstance(meta, dict) or not isinstance(meta.get("edge_classifier"), dict):
                raise ValueError("no edge_classifier section")
            legacy = ARRAYS_DIGEST not in meta and LEGACY_DIGEST in meta
            arrays, digest = _load_arrays(arrays_path, legacy)
        except (OSError, ValueError, KeyError, TypeError, EOFError, MemoryError,
                zipfile.BadZipFile) as exc:
            raise HeadLoadError(f"{arrays_path}: head file is corrupt or incomplete "
                                f"({exc})") from None
        if meta.get(LEGACY_DIGEST if legacy else ARRAYS_DIGEST, digest) != digest:
            return None
        return arrays, meta

    def save_head(self, arrays: Dict[str, np.ndarray], meta: dict) -> None:
        """Write the head atomically: arrays first, then the metadata that names them."""
        self._require_write("the head")
        meta = {k: v for k, v in meta.items() if k != LEGACY_DIGEST}
        with storage_errors("the head"):
            # Straight into the file, then its CRC-32 read back from it: no copy of the whole
            # archive in memory (38 MB at 10,000 samples, on top of the head itself).
            with atomic.atomic_writer(self.root / HEAD_ARRAYS, "wb") as f:
                write_npz(f, arrays)  # as np.savez, with no copy of each array
                f.flush()
                meta[ARRAYS_DIGEST] = _crc32(_fd_crc32(f.fileno()))
            atomic.write_text(self.root / HEAD_META, json.dumps(meta))

    def remove_head(self) -> None:
        """Forget the saved head (every sample is gone; the head is rebuilt from samples)."""
        self._require_write("removing the head")
        for name in (HEAD_META, HEAD_ARRAYS):
            with contextlib.suppress(OSError):
                (self.root / name).unlink()

    # -- import bookkeeping --------------------------------------------------------------------
    def read_imports(self) -> Dict[str, dict]:
        """``{file key: {"id": sample id, "labels": [...]}}`` of what ``train`` imported; a
        torn last line (a kill while writing it) is ignored."""
        imported: Dict[str, dict] = {}
        try:
            legacy = json.loads(read_own(self.root / LEGACY_IMPORTS).decode("utf-8"))
            if isinstance(legacy, dict):
                imported.update({k: v for k, v in legacy.items() if _import_entry(v)})
        except (OSError, ValueError):
            pass
        try:
            lines = read_own(self.root / IMPORTS, IMPORTS_LIMIT).decode("utf-8", "replace")
        except OSError:
            lines = ""
        for line in lines.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("file"), str) \
                    and _import_entry(entry):
                imported[entry["file"]] = {"id": entry["id"], "labels": entry["labels"]}
        return imported

    @contextlib.contextmanager
    def import_journal(self) -> Iterator["ImportJournal"]:
        """Append import records durably (each is on disk before its sample is written)."""
        self._require_write("the import list")
        with storage_errors("the import list"):
            fd = open_fd(self.root / IMPORTS, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            f = os.fdopen(fd, "a", encoding="utf-8")
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                f.write("\n")  # a line torn by a power cut must not swallow the next record
        try:
            yield ImportJournal(f)
        finally:
            f.close()

    # -- the last good config ------------------------------------------------------------------
    def last_good_config(self) -> Optional[Tuple[str, Path]]:
        """(text, path) of the last config the device started with, if kept."""
        path = self.root / LAST_GOOD
        try:
            return read_own(path).decode("utf-8"), path
        except (OSError, UnicodeDecodeError):
            return None

    def keep_good_config(self, text: str) -> None:
        """Remember ``text`` as the config that started the device."""
        self._require_write("the last good config")
        with storage_errors("the last good config"):
            atomic.write_text(self.root / LAST_GOOD, text)

    # -- the fleet's replicated state ----------------------------------------------------------
    def read_fleet(self) -> Optional[dict]:
        """``fleet.json`` (:mod:`edge_classifier.comms.fleet`) as a dict; None if missing or
        unreadable (the fleet then starts from the store and the group's messages)."""
        try:
            data = json.loads(read_own(self.root / FLEET).decode("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_fleet(self, data: dict) -> None:
        """Replace ``fleet.json`` atomically (a kill leaves the old or the new one)."""
        self._require_write("the fleet state")
        with storage_errors("the fleet state"):
            atomic.write_text(self.root / FLEET, json.dumps(data, separators=(",", ":")))

    # -- helpers -------------------------------------------------------------------------------
    def _require_write(self, what: str) -> None:
        if not self.write:
            raise StoreError(f"{self.root} is open read-only: {what} was not written")


def _load_arrays(path: Path, legacy: bool = False) -> Tuple[Dict[str, np.ndarray], str]:
    """The arrays of ``head.npz`` (a regular file of the state; see :func:`open_own`), each
    read once into its own array (:mod:`.npzfile`: no inflating), and the file's CRC-32
    (SHA-256 with ``legacy``, as heads saved before 2026-12 name it). The digest pairs the
    file with ``head.json`` and catches corrupted bytes; it is no defence against someone who
    can write the state, who could rewrite both files."""
    with open_own(path) as f:
        arrays, crc = read_npz(f)
        if not legacy:
            return arrays, _crc32(crc)
        f.seek(0)
        return arrays, hashlib.sha256(f.read()).hexdigest()


def _fd_crc32(fd: int, chunk: int = 1 << 20) -> int:
    """CRC-32 of the whole file open at ``fd`` (read back with ``pread``, a chunk at a time)."""
    crc, offset = 0, 0
    while True:
        data = os.pread(fd, chunk, offset)
        if not data:
            return crc
        crc = zlib.crc32(data, crc)
        offset += len(data)


def _crc32(crc: int) -> str:
    return f"{crc:08x}"


def _import_entry(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("id"), str) and \
        isinstance(v.get("labels"), list) and all(isinstance(x, str) for x in v["labels"])


class ImportJournal:
    """Appends one JSON line per imported file and fsyncs it before returning."""

    def __init__(self, f):
        self._f = f

    def record(self, key: str, sample_id: str, labels: List[str]) -> None:
        line = json.dumps({"file": key, "id": sample_id, "labels": labels}, ensure_ascii=False)
        with storage_errors("the import list"):
            self._f.write(line + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
