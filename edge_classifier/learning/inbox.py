"""The inbox: frames the device was unsure about, kept for a person to file into a class.

Active learning in its plainest form: a frame that came out ``unknown`` (or below the
smoothing threshold) is what the classifier most needs a label for. The web studio keeps a
few of them (rate-limited by its caller, bounded here) and shows them; one click files a frame
into a class, where it becomes a sample like a capture, or discards it::

    inbox = state.open_inbox(limit=50)           # <state>/inbox, owned by the StateDir
    item = inbox.add(frame, {"label": "unknown", "closest": "cat", "confidence": 0.41})
    [i.id for i in inbox.items()]                # newest first
    rgb = inbox.load(item.id)                    # the frame as the camera gave it
    inbox.remove(item.id)                        # filed or discarded

Layout: ``inbox/<id>.png`` (the frame, lossless, so a filed frame is exactly what the model
saw) and ``inbox/<id>.json`` (what the device said about it, and when). Both are written
atomically, the PNG first; an item whose JSON is missing (a crash between the two) is removed
when the inbox is opened. Ids are 20 hex digits, like sample ids: nothing outside names a file.
Thread-safe: the web server adds and lists, the device loop files and discards.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from edge_classifier.core import atomic
from edge_classifier.errors import InboxItemNotFoundError, ReadOnlyStoreError
from edge_classifier.frames.images import load_image
from edge_classifier.learning.store import storage_errors

ID = re.compile(r"[0-9a-f]{20}")


@dataclass(frozen=True)
class InboxItem:
    id: str
    meta: Dict[str, object]  # label, closest, confidence, unknown, time (wall seconds)


class Inbox:
    """At most ``limit`` frames in ``folder`` (the oldest go first); see the module docstring.

    ``limit`` 0 keeps nothing (``add`` returns None). ``readonly`` lists and loads only.
    """

    def __init__(self, folder: Path, limit: int = 50, readonly: bool = False):
        self.folder = Path(folder)
        self.limit = int(limit)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._items: "OrderedDict[str, Dict[str, object]]" = OrderedDict()  # oldest first
        self._latest = ""
        if not readonly:
            with storage_errors("the inbox"):
                self.folder.mkdir(parents=True, exist_ok=True)
            atomic.remove_stale_temps(self.folder)
        self._load()
        if not readonly:
            self._trim()

    def _load(self) -> None:
        if not self.folder.is_dir():
            return
        for entry in sorted(self.folder.iterdir()):
            if entry.suffix != ".png" or not ID.fullmatch(entry.stem) or entry.is_symlink():
                continue
            try:
                meta = json.loads(entry.with_suffix(".json").read_text("utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError):
                if not self.readonly:  # the PNG of an add that never finished
                    with contextlib.suppress(OSError):
                        entry.unlink()
                continue
            self._items[entry.stem] = meta
        if not self.readonly:  # metadata whose frame is gone
            for entry in self.folder.glob("*.json"):
                if entry.stem not in self._items:
                    with contextlib.suppress(OSError):
                        entry.unlink()
        self._latest = max(self._items, default="")

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> List[InboxItem]:
        """The frames kept, newest first."""
        with self._lock:
            return [InboxItem(i, dict(m)) for i, m in reversed(self._items.items())]

    def path(self, item_id: str) -> Path:
        """The PNG of an item; :class:`InboxItemNotFoundError` if there is none."""
        with self._lock:
            if not isinstance(item_id, str) or item_id not in self._items:
                raise InboxItemNotFoundError(f"no frame {str(item_id)[:40]!r} in the inbox")
            return self.folder / f"{item_id}.png"

    def load(self, item_id: str) -> np.ndarray:
        """The frame (HxWx3 uint8 RGB)."""
        return load_image(self.path(item_id))

    # -- changing ------------------------------------------------------------------------------
    def add(self, rgb: np.ndarray, meta: Optional[Dict[str, object]] = None) -> Optional[InboxItem]:
        """Keep a frame (durably, on return); the oldest beyond ``limit`` are removed."""
        if self.limit <= 0:
            return None
        if self.readonly:
            raise ReadOnlyStoreError(f"{self.folder} is open read-only: the frame was not kept")
        out = io.BytesIO()
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(out, "PNG", compress_level=1)
        meta = dict(meta or {}, time=round(time.time(), 3))
        with self._lock:
            item_id = self._new_id()
            with storage_errors("the inbox frame"):
                atomic.write_bytes(self.folder / f"{item_id}.png", out.getvalue())
                try:
                    atomic.write_text(self.folder / f"{item_id}.json", json.dumps(meta))
                except OSError:
                    (self.folder / f"{item_id}.png").unlink(missing_ok=True)
                    raise
            self._items[item_id] = meta
        self._trim()
        return InboxItem(item_id, dict(meta))

    def remove(self, item_id: str) -> None:
        """Forget one frame (filed into a class, or discarded)."""
        path = self.path(item_id)
        if self.readonly:
            raise ReadOnlyStoreError(f"{self.folder} is open read-only: nothing was removed")
        with self._lock:
            with storage_errors("removing the inbox frame"):
                path.with_suffix(".json").unlink(missing_ok=True)
                path.unlink(missing_ok=True)
            self._items.pop(item_id, None)

    def _trim(self) -> None:
        while len(self._items) > max(self.limit, 0):
            oldest = next(iter(self._items))
            with contextlib.suppress(OSError):
                self.remove(oldest)
            self._items.pop(oldest, None)

    def _new_id(self) -> str:
        now = time.time_ns()
        if self._latest:
            now = max(now, int(self._latest[:16], 16) + 1)
        self._latest = f"{now:016x}{secrets.token_hex(2)}"
        return self._latest
