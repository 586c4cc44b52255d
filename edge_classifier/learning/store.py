"""The sample store: the class list (``store.json``) and the samples of a state directory.

Opened through :class:`~edge_classifier.learning.state.StateDir`, which owns the rest of the
folder; the on-disk format is :mod:`~edge_classifier.learning.store_disk`. Every file is written
atomically; a sample is durable when :meth:`SampleStore.add_sample` returns. Class folders have
opaque names, so a rename only rewrites the ``name`` file and ``store.json``::

    store = SampleStore(state_dir, backbone=backbone.identity)
    store.add_sample("apple", views, thumbnail)
    views, y, names = store.samples_matrix()   # NxVxD, N, C
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from edge_classifier.core import atomic
from edge_classifier.core.names import class_key, validate_class_name
from edge_classifier.errors import (ClassLimitError, ReadOnlyStoreError, StoreError,
                                    UnknownClassError)
from edge_classifier.learning.compact import Compactor, ViewRows, expand as _expand
from edge_classifier.learning.store_disk import (META, SAMPLES, TRASH_PREFIX, check_backbone,
                                                 clean_leftovers, holds_samples, jpeg_thumbnail,
                                                 list_class_folder, load_class_folder, meta_text,
                                                 names_from_folders, new_id, read_meta,
                                                 read_sample, safe_folder, storage_errors,
                                                 unlisted_folders)

__all__ = ["CLASS_CEILING", "META", "SampleStore", "read_meta", "storage_errors"]
CLASS_CEILING = 1000  # no state holds more classes: the most head.max_classes may be


class SampleStore:
    """Per-class embeddings and thumbnails in a state directory (created if missing).

    :param backbone: the backbone's ``identity``; opening a store filled by another backbone
        raises :class:`StoreError` (its embeddings would be meaningless).
    :param thumbnail_size: short side of stored thumbnails in pixels (0: no thumbnails).
    :param readonly: read what is there; create, clean up and write nothing. A read-only
        store lists the samples at open and reads each when it is first needed (``predict``
        with a saved head that matches needs none); one found unreadable then is left out and
        said so in ``problems``, as a writer says it at open.
    :param max_classes: most classes the store may hold (None: :data:`CLASS_CEILING`).
    :param head: the head name the state is taught with, remembered in ``store.json``.

    Nothing on disk is deleted because ``store.json`` does not mention it: a class folder
    missing from the list (or a lost or unreadable list) is adopted back from the ``name`` file
    each folder keeps, and ``problems`` says what was found. Only explicit deletions (delete a
    sample, clear or delete a class) remove samples.
    """

    def __init__(self, root: "os.PathLike[str] | str", backbone: Optional[dict] = None,
                 thumbnail_size: int = 224, *, readonly: bool = False,
                 max_classes: Optional[int] = None, head: Optional[str] = None):
        self.root = Path(root)
        self.thumbnail_size = thumbnail_size
        self.readonly = readonly
        self.max_classes = CLASS_CEILING if max_classes is None else max_classes
        self.problems: List[str] = []
        self.backbone = backbone
        self.head = head
        self._classes: "OrderedDict[str, str]" = OrderedDict()  # name -> directory
        self._keys: Optional[Dict[str, str]] = {}  # class_key -> name; None: rebuild
        self._samples: Dict[str, "OrderedDict[str, np.ndarray]"] = {}
        self._compact = Compactor()  # the in-memory form: one table of values for all samples
        if (self.root / SAMPLES).is_symlink():
            raise StoreError(f"{self.root / SAMPLES}: a symbolic link; the samples must be a "
                             "folder inside the state (nothing outside it is read, written or "
                             "deleted): put the folder it points to in its place")
        if not readonly:
            with storage_errors("the state directory"):
                (self.root / SAMPLES).mkdir(parents=True, exist_ok=True)
        self._load_meta(backbone)
        self._load_samples()
        self._latest = max((max(s) for s in self._samples.values() if s), default="")

    # -- opening -------------------------------------------------------------------------------
    def _load_meta(self, backbone: Optional[dict]) -> None:
        path = self.root / META
        stored, dirty = None, False
        meta = read_meta(self.root)
        if meta is None:
            samples = self.root / SAMPLES
            if path.exists() or (samples.is_dir() and any(samples.iterdir())):
                why = "unreadable" if path.exists() else "missing"
                self.problems.append(f"{path}: {why}; rebuilding the class list from the class "
                                     "folders")
            dirty = True
        else:
            stored = meta.get("backbone") if isinstance(meta.get("backbone"), dict) else None
            if self.head is None and isinstance(meta.get("head"), str):
                self.head = meta["head"]
            classes, used = meta.get("classes"), set()
            for c in classes if isinstance(classes, list) else []:
                try:
                    name, folder = validate_class_name(c["name"]), c["dir"]
                except (ValueError, KeyError, TypeError):
                    self.problems.append(f"{path}: a class entry is unreadable ({str(c)[:80]}); "
                                         "ignored")
                    dirty = True
                    continue
                if not safe_folder(folder) or folder in used:
                    self.problems.append(f"{path}: class {name!r} names folder {str(folder)[:80]!r}, "
                                         "which is not a folder of this state; ignored")
                    dirty = True
                    continue
                if self._find(name) is not None:
                    self.problems.append(f"{path}: class {name!r} is listed twice; ignored")
                    dirty = True
                    continue
                self._set_class(name, folder)
                used.add(folder)
            renamed, changed = names_from_folders(self.root / SAMPLES, self._classes,
                                                  self.readonly, self.problems)
            if changed:
                self._classes, self._keys, dirty = renamed, None, True
        dirty |= self._adopt_folders()
        try:
            check_backbone(self.root, stored, backbone)
        except StoreError as exc:
            if holds_samples(self.root / SAMPLES):
                raise
            # No sample of the old backbone (model, resize or crop) is left to mix with:
            # the state takes the new one, keeping its classes.
            self.problems.append(f"{str(exc).replace(' holds samples ', ' held samples ', 1)}"
                                 "; none is left, so it now takes samples of this one")
            stored = None
        if backbone and not stored:
            dirty = True
        if meta is not None and self.head is not None and meta.get("head") != self.head:
            dirty = True
        if dirty and not self.readonly:
            try:
                self._write_meta()
            except StoreError as exc:
                self.problems.append(f"{exc}; the state is read-only until that is fixed")

    def _adopt_folders(self) -> bool:
        """Class folders that the list does not mention come back (their ``name`` file says
        which class they are); returns True if any did."""
        found = unlisted_folders(self.root / SAMPLES, set(self._classes.values()), self.problems)
        adopted = False
        for name, folder, count in found:
            if self._find(name) is not None:
                self.problems.append(f"{folder}: another folder already holds class {name!r}; "
                                     "left as it is")
                continue
            self._set_class(name, folder.name)
            self.problems.append(f"{folder}: class {name!r} ({count} samples) was not in the "
                                 "class list; adopted")
            adopted = True
        return adopted

    def _load_samples(self) -> None:
        samples_dir = self.root / SAMPLES
        if not self.readonly and samples_dir.is_dir():
            clean_leftovers(self.root)
        dim = self.backbone.get("embedding_dim") if self.backbone else None
        for name, folder in self._classes.items():
            if self.readonly:  # listed now, read when first needed (predict needs none)
                self._samples[name] = list_class_folder(samples_dir / folder, name,
                                                        self.problems)
                continue
            self._samples[name], dim = load_class_folder(samples_dir / folder, name, dim,
                                                         self.readonly, self.problems,
                                                         convert=self._compact)

    def _read(self, name: str) -> "OrderedDict[str, np.ndarray]":
        """The samples of class ``name`` with every sample read (a read-only store lists them
        at open and reads them here, once; one that cannot be read is dropped from the store's
        list, not the disk, and said so in ``problems``)."""
        samples = self._samples[name]
        unread = [sid for sid, v in samples.items() if v is None]
        if unread:
            dim = self.backbone.get("embedding_dim") if self.backbone else None
            folder = self.root / SAMPLES / self._classes[name]
            for sid in unread:
                try:
                    samples[sid] = self._compact(read_sample(folder / f"{sid}.npy", dim))
                except FileNotFoundError:  # deleted since it was listed (by the state's owner)
                    del samples[sid]
                except (ValueError, OSError, EOFError, MemoryError) as exc:
                    self.problems.append(f"{folder / f'{sid}.npy'}: unreadable sample skipped "
                                         f"({exc})")
                    del samples[sid]
        return samples

    def _write_meta(self) -> None:
        self._require_writable("the class list")
        with storage_errors("the class list"):
            atomic.write_text(self.root / META, meta_text(self.backbone, self.head, self._classes))

    def _require_writable(self, what: str) -> None:
        if self.readonly:
            raise ReadOnlyStoreError(f"{self.root} is open read-only: {what} was not stored")

    def _find(self, name: str) -> Optional[str]:
        """The stored class that ``name`` means (case and Unicode form ignored), if any."""
        if name in self._classes:
            return name
        if self._keys is None:
            self._keys = {class_key(n): n for n in self._classes}
        return self._keys.get(class_key(name))

    def _set_class(self, name: str, folder: str) -> None:
        self._classes[name] = folder
        if self._keys is not None:
            self._keys[class_key(name)] = name

    def resolve(self, name: str) -> str:
        """The stored spelling of class ``name`` (``apple`` -> ``Apple``); UnknownClassError."""
        found = self._find(validate_class_name(name))
        if found is None:
            raise UnknownClassError(f"no class {name!r}; classes: "
                                    f"{', '.join(self._classes) or 'none'}")
        return found

    def class_folder(self, name: str) -> str:
        """The opaque folder of class ``name``; it survives renames, so the fleet can tell a
        rename from a deletion and a new class (a hook for :mod:`edge_classifier.comms.fleet`)."""
        return self._classes[self.resolve(name)]

    def set_head(self, name: str) -> None:
        """Remember which head this state is taught with (``train --head multilabel``)."""
        if name != self.head:
            self.head = name
            self._write_meta()

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
        return _expand(self.stored_views(name, sample_id))

    def _item(self, name: str, sample_id: str):
        samples = self._get(name)
        try:
            item = samples[sample_id]
            if item is None:
                self._read(self._find(name))
                item = samples[sample_id]
            return item
        except KeyError:
            raise UnknownClassError(f"class {name!r} has no sample {sample_id!r}") from None

    def _get(self, name: str) -> "OrderedDict[str, np.ndarray]":
        found = self._find(name) if isinstance(name, str) else None
        if found is None:
            raise UnknownClassError(f"no class {name!r}; classes: "
                                    f"{', '.join(self._classes) or 'none'}")
        return self._samples[found]

    def samples_matrix(self) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """(NxVxD views, N labels, class names): one row per sample, row ``[:, 0]`` the frame
        itself. Samples with more views than the fewest are cut to that many."""
        blocks, labels = [], []
        for label, name in enumerate(self._classes):
            for v in self._read(name).values():
                blocks.append(v)
                labels.append(label)
        if not blocks:
            dim = self.backbone.get("embedding_dim", 0) if self.backbone else 0
            return np.zeros((0, 1, dim), np.float32), np.zeros(0, np.int64), self.classes
        v = min(b.shape[0] for b in blocks)
        return (np.stack([_expand(b)[:v] for b in blocks]).astype(np.float32),
                np.asarray(labels, dtype=np.int64), self.classes)

    def sample_rows(self) -> Tuple[ViewRows, np.ndarray, List[str]]:
        """:meth:`samples_matrix` without the matrix: the samples as a
        :class:`~edge_classifier.learning.compact.ViewRows` over their in-memory form (read a few
        rows at a time), the labels and the class names."""
        items, labels = [], []
        for label, name in enumerate(self._classes):
            samples = self._read(name)
            items.extend(samples.values())
            labels.extend([label] * len(samples))
        return ViewRows(items), np.asarray(labels, dtype=np.int64), self.classes

    def stored_views(self, name: str, sample_id: str):
        """A sample's views in their in-memory form (never changed in place: safe to keep
        for a :class:`~edge_classifier.learning.compact.ViewRows` in another thread)."""
        return self._item(name, sample_id)

    def multilabel_matrix(self) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """(NxVxD views, NxC 0/1 labels, class names): one row per sample id, a multi-label
        sample being stored once per label under the same id."""
        rows: Dict[str, np.ndarray] = {}
        labels: Dict[str, List[int]] = {}
        for label, name in enumerate(self._classes):
            for sid, v in self._read(name).items():
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
        return np.stack([_expand(rows[i])[:v] for i in ids]).astype(np.float32), Y, self.classes

    def fingerprint(self) -> str:
        """Changes whenever a class or sample is added, removed or renamed."""
        digest = hashlib.sha256(json.dumps(self.backbone, sort_keys=True).encode())
        for name in self._classes:  # a class's ids in one update: the same digest, ~10x faster
            digest.update(name.encode() + b"\0" + "".join(self._samples[name]).encode())
        return digest.hexdigest()[:16]

    # -- classes -------------------------------------------------------------------------------
    def add_class(self, name: str) -> str:
        """Create an empty class; returns its stored name (the existing class if ``name``
        means one already, whatever its case). :class:`ClassLimitError` past ``max_classes``."""
        name = validate_class_name(name)
        found = self._find(name)
        if found is not None:
            return found
        self._require_writable(f"class {name!r}")
        if len(self._classes) >= self.max_classes:
            raise ClassLimitError(f"class {name!r} not created: the state already holds "
                                  f"{len(self._classes)} classes, the limit (head.max_classes)")
        folder = f"c{secrets.token_hex(6)}"
        path = self.root / SAMPLES / folder
        # Built aside and renamed into place, so a kill never leaves a folder without its name
        # file; what a kill leaves aside is cleaned up at the next open, like a deletion's.
        staging = self.root / SAMPLES / f"{TRASH_PREFIX}new-{folder}"
        with storage_errors(f"class {name!r}"):
            staging.mkdir()
            try:
                atomic.write_text(staging / "name", name)
                os.replace(staging, path)
                self._set_class(name, folder)
                self._write_meta()
            except BaseException:  # a full disk leaves no empty folder behind
                self._classes.pop(name, None)
                self._keys = None
                shutil.rmtree(staging, ignore_errors=True)
                shutil.rmtree(path, ignore_errors=True)
                raise
        self._samples[name] = OrderedDict()
        return name

    def rename_class(self, old: str, new: str) -> str:
        """Rename a class (its samples stay where they are); returns the new stored name."""
        old = self.resolve(old)
        new = validate_class_name(new)
        clash = self._find(new)
        if clash is not None and clash != old:
            raise StoreError(f"a class called {clash!r} already exists")
        self._require_writable(f"renaming {old!r}")
        items = [(new if n == old else n, d) for n, d in self._classes.items()]
        before = self._classes
        self._classes, self._keys = OrderedDict(items), None
        try:
            atomic.write_text(self.root / SAMPLES / self._classes[new] / "name", new)
            self._write_meta()
        except (StoreError, OSError) as exc:
            self._classes, self._keys = before, None
            with contextlib.suppress(OSError):
                atomic.write_text(self.root / SAMPLES / before[old] / "name", old)
            if isinstance(exc, StoreError):
                raise
            with storage_errors(f"renaming {old!r}"):
                raise exc
        self._samples[new] = self._samples.pop(old)
        return new

    def delete_class(self, name: str) -> int:
        """Delete a class and its samples (an explicit user action); returns how many samples
        went. The folder is moved aside first, so a crash never brings the class back half."""
        name = self.resolve(name)
        self._require_writable(f"deleting {name!r}")
        folder = self._classes[name]
        trash = self.root / SAMPLES / f"{TRASH_PREFIX}{secrets.token_hex(4)}"
        with storage_errors(f"deleting {name!r}"):
            os.replace(self.root / SAMPLES / folder, trash)
        del self._classes[name]
        self._keys = None
        try:
            self._write_meta()
        except StoreError:
            self._classes[name] = folder
            with contextlib.suppress(OSError):
                os.replace(trash, self.root / SAMPLES / folder)
            raise
        count = len(self._samples.pop(name))
        shutil.rmtree(trash, ignore_errors=True)
        return count

    def clear_class(self, name: str) -> int:
        """Delete every sample of a class, keeping the class; returns how many were deleted."""
        name = self.resolve(name)
        self._require_writable(f"clearing {name!r}")
        samples = self._samples[name]
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
        self._require_writable(f"the sample for {name!r}")
        name = self.add_class(name)
        samples = self._samples[name]
        if sample_id is None:
            sample_id = self.new_sample_id()
        elif not (len(sample_id) == 20 and all(c in "0123456789abcdef" for c in sample_id)):
            raise StoreError(f"bad sample id {sample_id!r}")
        folder = self.root / SAMPLES / self._classes[name]
        with storage_errors(f"the sample for {name!r}"):
            if thumbnail is not None and self.thumbnail_size:
                atomic.write_bytes(folder / f"{sample_id}.jpg", jpeg_thumbnail(thumbnail, self.thumbnail_size))
            buf = io.BytesIO()
            np.save(buf, views, allow_pickle=False)
            try:
                atomic.write_bytes(folder / f"{sample_id}.npy", buf.getvalue())
            except OSError:
                (folder / f"{sample_id}.jpg").unlink(missing_ok=True)
                raise
        samples[sample_id] = self._compact(views)
        self._latest = max(self._latest, sample_id)
        return sample_id

    def new_sample_id(self) -> str:
        """An id later than every stored sample's, even if the clock went back."""
        return new_id(self._latest)

    def remove_sample(self, name: str, sample_id: str) -> None:
        name = self.resolve(name)
        samples = self._samples[name]
        if sample_id not in samples:
            raise UnknownClassError(f"class {name!r} has no sample {sample_id!r}")
        self._require_writable(f"removing a sample of {name!r}")
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

    def has_sample(self, name: str, sample_id: str) -> bool:
        found = self._find(name)
        return found is not None and sample_id in self._samples[found]

    def thumbnail_path(self, name: str, sample_id: str) -> Optional[Path]:
        path = self.root / SAMPLES / self._classes[self.resolve(name)] / f"{sample_id}.jpg"
        return path if path.is_file() and not path.is_symlink() else None

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
