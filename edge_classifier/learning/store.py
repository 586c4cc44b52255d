"""The sample store: what the device has learned, kept crash-safely on disk.

Layout of a state directory::

    store.json                   classes (in label order) and the backbone that embedded them
    samples/<class-dir>/<id>.npy one sample: its embedding views (VxD float32; row 0 the frame
                                 itself, the rest augmented views such as its mirror image)
    samples/<class-dir>/<id>.jpg its thumbnail (short side ``thumbnail_size``)
    head.npz, head.json          the fitted head (rebuildable from the samples)

Every file is written atomically (temp file, fsync, rename, fsync folder); a sample is durable
when :meth:`SampleStore.add_sample` returns. A class directory has an opaque name, so renaming a
class only rewrites ``store.json``. On opening, stray temporary files and folders of deleted
classes are removed, and unreadable samples are skipped and reported in ``problems``::

    store = SampleStore("/var/lib/edge-classifier", backbone=backbone.identity)
    store.add_sample("apple", views, thumbnail)
    views, y, names = store.samples_matrix()   # NxVxD, N, C
"""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import shutil
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from edge_classifier.core import atomic
from edge_classifier.errors import (ReadOnlyStoreError, StorageFullError, StoreError, UnknownClassError)
from edge_classifier.core.names import validate_class_name

FORMAT = 1
META = "store.json"
SAMPLES = "samples"
TRASH_PREFIX = ".trash-"


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


def _new_id(after: str) -> str:
    """A sample id later than ``after`` in sort order (clock going back or not)."""
    now = time.time_ns()
    if after:
        now = max(now, int(after[:16], 16) + 1)
    return f"{now:016x}{secrets.token_hex(2)}"


class SampleStore:
    """Per-class embeddings and thumbnails in a state directory (created if missing).

    :param backbone: the backbone's ``identity``; opening a store filled by another backbone
        raises :class:`StoreError` (its embeddings would be meaningless).
    :param thumbnail_size: short side of stored thumbnails in pixels (0: no thumbnails).
    """

    def __init__(self, root: "os.PathLike[str] | str", backbone: Optional[dict] = None,
                 thumbnail_size: int = 224):
        self.root = Path(root)
        self.thumbnail_size = thumbnail_size
        self.problems: List[str] = []
        with storage_errors("the state directory"):
            (self.root / SAMPLES).mkdir(parents=True, exist_ok=True)
        self._classes: "OrderedDict[str, str]" = OrderedDict()  # name -> directory
        self._samples: Dict[str, "OrderedDict[str, np.ndarray]"] = {}
        self.backbone = backbone
        self._load_meta(backbone)
        self._load_samples()
        self._latest = max((max(s) for s in self._samples.values() if s), default="")

    # -- opening -------------------------------------------------------------------------------
    def _load_meta(self, backbone: Optional[dict]) -> None:
        path = self.root / META
        if not path.exists():
            self._write_meta()
            return
        try:
            meta = json.loads(path.read_text("utf-8"))
            classes = meta["classes"]
            stored = meta.get("backbone")
            for c in classes:
                self._classes[validate_class_name(c["name"])] = str(c["dir"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            self.problems.append(f"{path}: unreadable ({exc}); classes rebuilt from folders")
            self._classes = OrderedDict()
            stored = None
            self._recover_classes()
        if backbone and stored and stored.get("sha256") != backbone.get("sha256"):
            raise StoreError(
                f"{self.root} holds samples embedded with {stored.get('model')}, not "
                f"{backbone.get('model')}; use --model {stored.get('model')} or another --state")
        if backbone and stored and stored.get("resize") != backbone.get("resize"):
            raise StoreError(f"{self.root} holds samples preprocessed with resize="
                             f"{stored.get('resize')}, not {backbone.get('resize')}")
        if backbone and not stored:
            self._write_meta()

    def _recover_classes(self) -> None:
        """After losing store.json: each class folder keeps a ``name`` file."""
        for folder in sorted((self.root / SAMPLES).iterdir()):
            name_file = folder / "name"
            if folder.is_dir() and name_file.is_file():
                try:
                    self._classes[validate_class_name(name_file.read_text("utf-8"))] = folder.name
                except (ValueError, OSError):
                    continue
        self._write_meta()

    def _load_samples(self) -> None:
        samples_dir = self.root / SAMPLES
        known = set(self._classes.values())
        for entry in samples_dir.iterdir():  # folders of deleted classes, leftovers of clears
            if entry.is_dir() and entry.name not in known:
                shutil.rmtree(entry, ignore_errors=True)
        atomic.remove_stale_temps(samples_dir)
        atomic.remove_stale_temps(self.root)  # a crash while saving the class list or the head
        dim = self.backbone.get("embedding_dim") if self.backbone else None
        for name, folder in self._classes.items():
            path = samples_dir / folder
            path.mkdir(exist_ok=True)
            atomic.remove_stale_temps(path)
            loaded: "OrderedDict[str, np.ndarray]" = OrderedDict()
            for npy in sorted(path.glob("*.npy")):
                try:
                    views = np.load(npy, allow_pickle=False)
                    if views.ndim != 2 or not np.isfinite(views).all():
                        raise ValueError(f"bad array {views.shape}")
                    if dim and views.shape[1] != dim:
                        raise ValueError(f"{views.shape[1]}-d, expected {dim}-d")
                    if dim is None:
                        dim = views.shape[1]
                except (ValueError, OSError, EOFError) as exc:
                    self.problems.append(f"{npy}: unreadable sample skipped ({exc})")
                    continue
                loaded[npy.stem] = views.astype(np.float32, copy=False)
            for jpg in path.glob("*.jpg"):  # a thumbnail whose sample never landed
                if jpg.stem not in loaded and not (path / f"{jpg.stem}.npy").exists():
                    jpg.unlink(missing_ok=True)
            self._samples[name] = loaded

    def _write_meta(self) -> None:
        meta = {"format": FORMAT, "backbone": self.backbone,
                "classes": [{"name": n, "dir": d} for n, d in self._classes.items()]}
        with storage_errors("the class list"):
            atomic.write_text(self.root / META, json.dumps(meta, indent=1))

    # -- reading -------------------------------------------------------------------------------
    @property
    def classes(self) -> List[str]:
        """Class names in label order."""
        return list(self._classes)

    def counts(self) -> Dict[str, int]:
        return {name: len(self._samples[name]) for name in self._classes}

    def __len__(self) -> int:
        return sum(len(s) for s in self._samples.values())

    def sample_ids(self, name: str) -> List[str]:
        return list(self._get(name))

    def views(self, name: str, sample_id: str) -> np.ndarray:
        try:
            return self._get(name)[sample_id]
        except KeyError:
            raise UnknownClassError(f"class {name!r} has no sample {sample_id!r}") from None

    def _get(self, name: str) -> "OrderedDict[str, np.ndarray]":
        try:
            return self._samples[name]
        except KeyError:
            raise UnknownClassError(f"no class {name!r}; classes: {', '.join(self._classes) or 'none'}") from None

    def samples_matrix(self) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """(NxVxD views, N labels, class names): one row per sample, row ``[:, 0]`` the frame
        itself. Samples with more views than the fewest are cut to that many."""
        blocks, labels = [], []
        for label, name in enumerate(self._classes):
            for v in self._samples[name].values():
                blocks.append(v)
                labels.append(label)
        if not blocks:
            dim = self.backbone.get("embedding_dim", 0) if self.backbone else 0
            return np.zeros((0, 1, dim), np.float32), np.zeros(0, np.int64), self.classes
        v = min(b.shape[0] for b in blocks)
        return (np.stack([b[:v] for b in blocks]).astype(np.float32),
                np.asarray(labels, dtype=np.int64), self.classes)

    def multilabel_matrix(self) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """(NxVxD views, NxC 0/1 labels, class names): one row per sample id, a multi-label
        sample being stored once per label under the same id."""
        rows: Dict[str, np.ndarray] = {}
        labels: Dict[str, List[int]] = {}
        for label, name in enumerate(self._classes):
            for sid, v in self._samples[name].items():
                rows.setdefault(sid, v)
                labels.setdefault(sid, []).append(label)
        ids = sorted(rows)
        dim = self.backbone.get("embedding_dim", 0) if self.backbone else 0
        if not ids:
            return (np.zeros((0, 1, dim), np.float32), np.zeros((0, len(self._classes))),
                    self.classes)
        v = min(rows[i].shape[0] for i in ids)
        Y = np.zeros((len(ids), len(self._classes)), dtype=np.float32)
        for r, sid in enumerate(ids):
            Y[r, labels[sid]] = 1.0
        return np.stack([rows[i][:v] for i in ids]).astype(np.float32), Y, self.classes

    def fingerprint(self) -> str:
        """Changes whenever a class or sample is added, removed or renamed."""
        import hashlib
        digest = hashlib.sha256(json.dumps(self.backbone, sort_keys=True).encode())
        for name in self._classes:
            digest.update(name.encode() + b"\0")
            for sid in self._samples[name]:
                digest.update(sid.encode())
        return digest.hexdigest()[:16]

    # -- classes -------------------------------------------------------------------------------
    def add_class(self, name: str) -> None:
        """Create an empty class (no-op if it exists)."""
        name = validate_class_name(name)
        if name in self._classes:
            return
        folder = f"c{secrets.token_hex(6)}"
        with storage_errors(f"class {name!r}"):
            (self.root / SAMPLES / folder).mkdir()
            atomic.write_text(self.root / SAMPLES / folder / "name", name)
            self._classes[name] = folder
            try:
                self._write_meta()
            except StoreError:
                del self._classes[name]
                shutil.rmtree(self.root / SAMPLES / folder, ignore_errors=True)
                raise
        self._samples[name] = OrderedDict()

    def rename_class(self, old: str, new: str) -> None:
        new = validate_class_name(new)
        self._get(old)
        if new in self._classes and new != old:
            raise StoreError(f"a class called {new!r} already exists")
        items = [(new if n == old else n, d) for n, d in self._classes.items()]
        before = self._classes
        self._classes = OrderedDict(items)
        try:
            self._write_meta()
            atomic.write_text(self.root / SAMPLES / self._classes[new] / "name", new)
        except (StoreError, OSError):
            self._classes = before
            raise
        self._samples[new] = self._samples.pop(old)

    def delete_class(self, name: str) -> None:
        """Forget a class and its samples (its folder is removed now or at the next start)."""
        self._get(name)
        folder = self._classes.pop(name)
        try:
            self._write_meta()
        except StoreError:
            self._classes[name] = folder  # order may change; nothing is lost
            raise
        del self._samples[name]
        shutil.rmtree(self.root / SAMPLES / folder, ignore_errors=True)

    def clear_class(self, name: str) -> int:
        """Delete every sample of a class, keeping the class; returns how many were deleted."""
        samples = self._get(name)
        folder = self.root / SAMPLES / self._classes[name]
        trash = self.root / SAMPLES / f"{TRASH_PREFIX}{secrets.token_hex(4)}"
        with storage_errors(f"clearing {name!r}"):
            os.replace(folder, trash)  # atomic: all samples go at once
            folder.mkdir()
            atomic.write_text(folder / "name", name)
        count = len(samples)
        samples.clear()
        shutil.rmtree(trash, ignore_errors=True)
        return count

    # -- samples -------------------------------------------------------------------------------
    def add_sample(self, name: str, views: np.ndarray, thumbnail: Optional[np.ndarray] = None,
                   sample_id: Optional[str] = None) -> str:
        """Store one sample (creating its class); durable on return. Returns the sample id.

        ``sample_id`` reuses the id of a sample stored under another class: a multi-label
        sample is stored once per label with the same id.
        """
        views = np.atleast_2d(np.asarray(views, dtype=np.float32))
        if views.ndim != 2 or views.shape[0] < 1 or not np.isfinite(views).all():
            raise StoreError(f"sample for {name!r}: embedding must be finite VxD values")
        dim = self.backbone.get("embedding_dim") if self.backbone else None
        if dim and views.shape[1] != dim:
            raise StoreError(f"sample for {name!r}: {views.shape[1]}-d embedding, the backbone "
                             f"gives {dim}-d")
        if name not in self._classes:
            self.add_class(name)
        samples = self._samples[name]
        if sample_id is None:
            sample_id = self.new_sample_id()
        elif not (len(sample_id) == 20 and all(c in "0123456789abcdef" for c in sample_id)):
            raise StoreError(f"bad sample id {sample_id!r}")
        folder = self.root / SAMPLES / self._classes[name]
        with storage_errors(f"the sample for {name!r}"):
            if thumbnail is not None and self.thumbnail_size:
                atomic.write_bytes(folder / f"{sample_id}.jpg", self._jpeg(thumbnail))
            buf = io.BytesIO()
            np.save(buf, views, allow_pickle=False)
            try:
                atomic.write_bytes(folder / f"{sample_id}.npy", buf.getvalue())
            except OSError:
                (folder / f"{sample_id}.jpg").unlink(missing_ok=True)
                raise
        samples[sample_id] = views
        self._latest = max(self._latest, sample_id)
        return sample_id

    def new_sample_id(self) -> str:
        """An id later than every stored sample's, even if the clock went back."""
        return _new_id(self._latest)

    def _jpeg(self, rgb: np.ndarray) -> bytes:
        from PIL import Image
        image = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
        scale = self.thumbnail_size / min(image.size)
        if scale < 1:
            image = image.resize((max(1, round(image.width * scale)),
                                  max(1, round(image.height * scale))), Image.BILINEAR)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        return out.getvalue()

    def remove_sample(self, name: str, sample_id: str) -> None:
        samples = self._get(name)
        if sample_id not in samples:
            raise UnknownClassError(f"class {name!r} has no sample {sample_id!r}")
        folder = self.root / SAMPLES / self._classes[name]
        with storage_errors(f"removing a sample of {name!r}"):
            (folder / f"{sample_id}.npy").unlink(missing_ok=True)
            atomic.fsync_dir(folder)
        (folder / f"{sample_id}.jpg").unlink(missing_ok=True)
        del samples[sample_id]

    def delete_last(self, name: str) -> Optional[str]:
        """Remove the newest sample of a class; returns its id, or None if it had none."""
        samples = self._get(name)
        if not samples:
            return None
        sample_id = next(reversed(samples))
        self.remove_sample(name, sample_id)
        return sample_id

    def thumbnail_path(self, name: str, sample_id: str) -> Optional[Path]:
        path = self.root / SAMPLES / self._classes[name] / f"{sample_id}.jpg"
        return path if path.is_file() else None

    def export_folders(self, dest: "os.PathLike[str] | str") -> int:
        """Copy thumbnails to ``dest/<class>/<id>.jpg`` (a folder data set); returns the count."""
        dest = Path(dest)
        copied = 0
        for name in self._classes:
            (dest / name).mkdir(parents=True, exist_ok=True)
            for sid in self._samples[name]:
                src = self.thumbnail_path(name, sid)
                if src is not None:
                    shutil.copyfile(src, dest / name / src.name)
                    copied += 1
        return copied
