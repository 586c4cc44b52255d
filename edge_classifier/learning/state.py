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
    lock                 held (``flock``) by the process that changes the state

A process that changes the state holds ``lock`` exclusively: an advisory lock the OS releases
when the process dies, so a kill never leaves it stuck. A second writer gets a
:class:`~edge_classifier.errors.StateLockedError` naming the holder (PID and command).
Read-only users take no lock and write nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from edge_classifier.core import atomic
from edge_classifier.errors import HeadLoadError, StateLockedError, StoreError
from edge_classifier.learning.inbox import Inbox
from edge_classifier.learning.store import META, SampleStore, read_meta, storage_errors

HEAD_ARRAYS = "head.npz"
HEAD_META = "head.json"
IMPORTS = "imports.jsonl"
LEGACY_IMPORTS = "imports.json"
LAST_GOOD = "config.last-good.toml"
INBOX = "inbox"
LOCK = "lock"


class StateLock:
    """An exclusive advisory lock on ``<root>/lock`` holding the owner's PID and command.

    ``acquire()`` raises :class:`StateLockedError` when another process holds it. On a
    read-only state directory (nothing can change it anyway) the lock is skipped and
    ``held`` stays False.
    """

    def __init__(self, root: Path, command: str):
        self.path = Path(root) / LOCK
        self.command = command
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        import fcntl
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError:
            try:  # a read-only state: lock the existing file, or go without
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateLockedError(
                f"{self.path.parent} is in use by {holder}; stop it first (for a service: "
                "sudo systemctl stop edge-classifier), or teach the running device through its "
                "commands (MQTT cmd/capture, buttons) instead of a second process") from None
        except OSError:
            os.close(fd)
            return  # a file system without locks: nothing better to do
        self._fd = fd
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "command": self.command}).encode())

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing releases the flock; the file stays (others may wait on it)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8"))
        return f"PID {int(info['pid'])} ({str(info['command'])[:80]})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


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
            return json.loads((self.root / HEAD_META).read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def load_head_files(self) -> Optional[Tuple[Dict[str, np.ndarray], dict]]:
        """(arrays, metadata) of the saved head; None if none; HeadLoadError if unusable."""
        meta_path, arrays_path = self.root / HEAD_META, self.root / HEAD_ARRAYS
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
            with np.load(arrays_path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            if not isinstance(meta, dict) or not isinstance(meta.get("edge_classifier"), dict):
                raise ValueError("no edge_classifier section")
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise HeadLoadError(f"{arrays_path}: head file is corrupt or incomplete "
                                f"({exc})") from None
        return arrays, meta

    def save_head(self, arrays: Dict[str, np.ndarray], meta: dict) -> None:
        """Write the head atomically: arrays first, then the metadata that names them."""
        self._require_write("the head")
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with storage_errors("the head"):
            atomic.write_bytes(self.root / HEAD_ARRAYS, buf.getvalue())
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
            legacy = json.loads((self.root / LEGACY_IMPORTS).read_text("utf-8"))
            if isinstance(legacy, dict):
                imported.update({k: v for k, v in legacy.items() if _import_entry(v)})
        except (OSError, ValueError):
            pass
        try:
            with open(self.root / IMPORTS, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict) and isinstance(entry.get("file"), str) \
                            and _import_entry(entry):
                        imported[entry["file"]] = {"id": entry["id"], "labels": entry["labels"]}
        except OSError:
            pass
        return imported

    @contextlib.contextmanager
    def import_journal(self) -> Iterator["ImportJournal"]:
        """Append import records durably (each is on disk before its sample is written)."""
        self._require_write("the import list")
        with storage_errors("the import list"):
            f = open(self.root / IMPORTS, "a", encoding="utf-8")
        try:
            yield ImportJournal(f)
        finally:
            f.close()

    # -- the last good config ------------------------------------------------------------------
    def last_good_config(self) -> Optional[Tuple[str, Path]]:
        """(text, path) of the last config the device started with, if kept."""
        path = self.root / LAST_GOOD
        try:
            return path.read_text("utf-8"), path
        except (OSError, UnicodeDecodeError):
            return None

    def keep_good_config(self, text: str) -> None:
        """Remember ``text`` as the config that started the device."""
        self._require_write("the last good config")
        with storage_errors("the last good config"):
            atomic.write_text(self.root / LAST_GOOD, text)

    # -- helpers -------------------------------------------------------------------------------
    def _require_write(self, what: str) -> None:
        if not self.write:
            raise StoreError(f"{self.root} is open read-only: {what} was not written")


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
