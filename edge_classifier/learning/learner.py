"""The learner: backbone, state directory and head wired together.

It is what ``train`` and ``predict`` use, and what the device loop calls on every frame and
every capture::

    with StateDir(state_dir, command="edge-classifier run") as state:
        learner = Learner(backbone, state)
        learner.capture("apple", frame)      # stored durably, head updated at once
        p = learner.predict(frame)           # Prediction(label="apple", confidence=0.97, ...)

The head is saved through the state (``head.npz`` + ``head.json``: head name, classes, the
backbone's identity and the samples' fingerprint). A head that is missing, corrupt, from
another backbone or older than the samples is rebuilt from the samples, and ``problems`` says
why. Which head a state uses is the state's own answer (``train --head multilabel`` stays
multi-label under ``run``) unless the caller names one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from edge_classifier.core import blas
from edge_classifier.core.names import UNKNOWN
from edge_classifier.errors import HeadError, HeadLoadError, StoreError
from edge_classifier.learning.augment import Augmentation, embed_views
from edge_classifier.learning.compact import CompactViews, ViewRows
from edge_classifier.learning.heads import load_head, make_head
from edge_classifier.learning.limits import over_limit
from edge_classifier.learning.state import StateDir

log = logging.getLogger(__name__)
DEFAULT_HEAD = "auto"
MULTILABEL = "multilabel"
#: Up to this many samples removed at once are downdated in the caller's thread (one Woodbury
#: update, a few ms); more, a renamed or deleted class, refit in the background.
INLINE_CHANGES = 64  # removals plus additions brought in at once; more: refit off the loop


@dataclass(frozen=True)
class Prediction:
    label: str  # a class name, or "unknown"
    confidence: float  # calibrated probability of ``label`` (of the best class if unknown)
    scores: Dict[str, float]  # calibrated probability of every class
    unknown: bool  # True when the open-set test rejected the frame
    best: Optional[str] = None  # the most likely class even when rejected
    embedding: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    unknown_score: Optional[float] = None  # higher: farther from everything taught
    unknown_threshold: Optional[float] = None  # unknown when the score is above it

    def as_dict(self) -> dict:
        d = {"label": self.label, "confidence": round(self.confidence, 4),
             "scores": {k: round(v, 4) for k, v in self.scores.items()},
             "unknown": self.unknown, "closest": self.best}
        if self.unknown_score is not None:
            d["unknown_score"] = round(self.unknown_score, 4)
            d["unknown_threshold"] = round(float(self.unknown_threshold), 4)
        return d


NO_CLASSES = Prediction(UNKNOWN, 0.0, {}, True)


@dataclass(frozen=True)
class Captured:
    """What one capture did: the new sample's id, the frame's embedding (so the caller need
    not embed the frame again), and the ids the class limit dropped to make room."""

    class_name: str
    sample_id: str
    embedding: np.ndarray = field(repr=False)
    dropped: List[str] = field(default_factory=list)


class Learner:
    """Learns from captured frames and predicts on new ones; see the module docstring.

    :param head_name: None (the state's head, else ``auto``) or a head name.
    :param max_samples_per_class: a class over it drops samples by ``drop_policy``.
    """

    def __init__(self, backbone, state: StateDir, head_name: Optional[str] = None,
                 augmentation: Augmentation = Augmentation(), load: bool = True, *,
                 max_classes: Optional[int] = None, max_samples_per_class: Optional[int] = None,
                 drop_policy: str = "oldest", thumbnail_size: int = 224):
        self.backbone = backbone
        self.state = state
        stored_head = state.head_name()
        chosen = head_name or stored_head or DEFAULT_HEAD
        if stored_head == MULTILABEL and chosen != MULTILABEL:
            raise StoreError(f"{state.root} was taught multi-label (train on a CSV); use head "
                             f"'{MULTILABEL}' with it (or leave head.name empty), or another state")
        make_head(chosen)  # an unknown name fails here, before anything is written
        self.store = state.open_store(backbone.identity, thumbnail_size=thumbnail_size,
                                      max_classes=max_classes,
                                      head=chosen if state.write else None)
        self.head_name = chosen
        self.augmentation = augmentation
        self.max_samples_per_class = max_samples_per_class
        self.drop_policy = drop_policy
        self.head = None
        self.multilabel = chosen == MULTILABEL
        self.problems: List[str] = list(state.problems)
        self.last_fit_ms = 0.0
        self._dirty = False
        self._rows: List[str] = []  # sample id of each head sample, in the head's order
        self._job: Optional[_Background] = None
        self._saver: Optional[_Background] = None  # a save under way (save_in_background)
        self._saved_rows: object = None  # what the saved head's metadata says (load_saved_head)
        self._saved_crc: Optional[np.ndarray] = None
        if load:
            self.load_or_fit()

    # -- fitting -------------------------------------------------------------------------------
    def fit(self) -> None:
        """Fit the head on every stored sample (classes without samples are left out)."""
        head = make_head(self.head_name)
        if self.multilabel:
            views, y, names = self.store.multilabel_matrix()
        else:  # read from the store a few samples at a time by a head that can (see _fit)
            views, y, names = self.store.sample_rows()
        self._store_problems()
        if len(y) == 0:
            self.head = None
            self._rows = []
            return
        t0 = time.perf_counter()
        # Classes without samples are kept by the head (never predicted) so labels stay aligned.
        with blas.threads(None):  # every core for the fit (the device runs BLAS on one)
            _fit(head, views, y, names)
        self.last_fit_ms = (time.perf_counter() - t0) * 1000
        self.head = head
        self._rows = self._store_rows()
        self._dirty = True

    def _store_problems(self) -> None:
        """Add what the store found since it was opened (a read-only store reads its samples
        when they are first needed, and says there which it could not read)."""
        for p in self.store.problems:
            if p not in self.problems:
                self.problems.append(p)

    def load_or_fit(self) -> None:
        """Use the saved head if it matches the samples, else fit a new one. A head that
        cannot be saved (a full or read-only disk) is used all the same, and said so."""
        try:
            head = self.load_saved_head()
        except HeadLoadError as exc:
            self.problems.append(f"{exc}; rebuilding the head from the samples")
            head = None
        rows = None if head is None else self._hand_back_samples(head)
        if head is not None and rows is None:
            self.problems.append(f"{self.state.root}: the saved head does not match the stored "
                                 "samples; rebuilding the head from the samples")
            head = None
        if head is not None:
            self.head, self._rows = head, rows
            self._calibrate_later()
            return
        self.fit()
        if self.head is not None and self.state.write:
            try:
                self.save()
            except StoreError as exc:
                self.problems.append(f"{exc}; the head is refitted from the samples at every "
                                     "start until it can be saved")

    def _hand_back_samples(self, head) -> Optional[List[str]]:
        """The loaded head's sample ids in its order (the order saved with it: captures of
        several classes interleave; else the store's), or None if the head does not match the
        stored samples. A head that reads its points from the store is given them here and
        checked sample by sample against the checksums saved with it (a file whose content was
        changed behind the head's back would be subtracted wrongly when it is removed); a
        read-only state's samples are read only if the head needs them."""
        where = {sid: name for name in self.store.classes for sid in self.store.sample_ids(name)}
        saved = self._saved_rows
        rows = saved if isinstance(saved, list) and len(saved) == head.n_samples and \
            all(isinstance(r, str) for r in saved) and set(saved) == set(where) and \
            len(set(saved)) == len(saved) else self._store_rows()
        names, labels = head.classes, head.labels
        if len(rows) != head.n_samples or \
                any(where.get(sid) != names[lab] for sid, lab in zip(rows, labels.tolist())):
            return None
        if not getattr(head, "points_from_store", False):
            return rows

        def items():
            return [self.store.stored_views(where[sid], sid) for sid in rows]
        if not self.state.write:
            head.attach_points(items)
            return rows
        got = items()  # in memory already: references, at once
        head.attach_points(got)
        crc = self._saved_crc  # none: nothing to check the samples that are no landmark by
        if crc is None or crc.shape != (len(got),) or \
                not np.array_equal(sample_checksums(got), crc):
            return None
        return rows if head.points_match() else None

    def load_saved_head(self):
        """The saved head, None if there is none or it is stale; HeadLoadError if unusable."""
        files = self.state.load_head_files()
        if files is None:
            return None
        arrays, meta = files
        ours = meta["edge_classifier"]
        backbone = ours.get("backbone") or {}
        if not isinstance(backbone, dict) or backbone.get("sha256") != self.backbone.identity["sha256"]:
            raise HeadLoadError(f"{self.state.root}: the saved head was trained on "
                                f"{backbone.get('model') if isinstance(backbone, dict) else '?'}, "
                                f"not {self.backbone.name}")
        if ours.get("fingerprint") != self.store.fingerprint() or ours.get("head") != self.head_name:
            return None  # samples changed since it was saved: refit
        self._saved_rows = ours.get("rows")
        crc = arrays.pop(SAMPLE_CRC, None)
        self._saved_crc = None if crc is None else np.asarray(crc)
        try:
            return load_head(arrays, meta["head_meta"])
        except (HeadError, ValueError, KeyError, TypeError) as exc:
            raise HeadLoadError(f"{self.state.root}: the saved head cannot be loaded "
                                f"({exc})") from None

    def save(self) -> None:
        """Write the head through the state (atomically), in this thread. A refit under way is
        waited for first (the current head no longer matches the samples), and so is a save
        under way in the background."""
        if self._job is not None and self._job.kind == "refit":
            self.wait_background()
        self.wait_saved()
        write = self._save_snapshot(frozen=False)
        if write is not None:
            write()

    def save_in_background(self) -> bool:
        """Start writing the head in a thread of its own (the device's periodic save: at
        10,000 samples the write and its fsync take 50 ms and more, seconds on an SD card).
        What is written is the head as it is now; the head goes on learning meanwhile.
        Returns False when nothing was started: a save is still under way, or a refit is (the
        head no longer matches the samples; a later call saves the refitted one). A save that
        failed is logged and leaves the head :attr:`dirty`."""
        if self._saver is not None and not self._saver.done.is_set():
            return False
        self._saved_result()
        if self._job is not None and self._job.kind == "refit":
            return False
        write = self._save_snapshot(frozen=True)
        if write is None:
            return False
        self._saver = _Background("save", write)
        if self._saver.done.is_set():  # run at once (EDGE_CLASSIFIER_SYNC_HEAD=1)
            self._saved_result()
        return True

    def wait_saved(self) -> None:
        """Wait for a save under way in the background (before the state is closed, another
        save, or the head files are removed); logs its failure, as :meth:`save_in_background`."""
        if self._saver is not None:
            self._saver.done.wait()
            self._saved_result()

    def _saved_result(self) -> None:
        saver = self._saver
        if saver is None or not saver.done.is_set():
            return
        self._saver = None
        if saver.error is not None:  # (the write left the head dirty: tried again next time)
            if isinstance(saver.error, StoreError):
                log.error("head not saved: %s", saver.error)
            else:
                log.error("head not saved: %s", saver.error, exc_info=saver.error)

    def _save_snapshot(self, frozen: bool):
        """A function that writes the head as it is now (None: there is no head), marking it
        saved. ``frozen``: to run in another thread while the head is edited (the arrays it
        writes are left alone by later edits; see ``AutoHead.to_state``)."""
        if self.head is None:
            return None
        store_head = getattr(self.head, "points_from_store", None)  # None: not the auto head
        # the auto head's own arrays, not copies (written at once, or left alone by edits)
        arrays, head_meta = self.head.to_state() if store_head is None else \
            self.head.to_state(copy=False, frozen=frozen)
        ours = {"head": self.head_name, "backbone": self.backbone.identity,
                "fingerprint": self.store.fingerprint(), "augmentation": self.augmentation.key()}
        if len(self._rows) == self.head.n_samples:
            ours["rows"] = list(self._rows)  # the head's order (captures interleave classes)
        items = list(self.head.stored_items()) if store_head else None  # (a list that grows)
        meta = {"head_meta": head_meta, "edge_classifier": ours}
        state = self.state
        self._dirty = False

        def write() -> None:
            nonlocal items
            try:
                if items is not None:  # the samples' checksums: 22 ms of Python at 10,000
                    arrays[SAMPLE_CRC] = _polite_checksums(items)
                state.save_head(arrays, meta)
            except BaseException:
                self._dirty = True
                raise
            finally:  # arrays the head has replaced meanwhile are let go now, not at the next save
                arrays.clear()
                items = None
        return write

    @property
    def dirty(self) -> bool:
        """The head changed since it was last saved."""
        return self._dirty

    # -- learning from frames ------------------------------------------------------------------
    def capture(self, class_name: str, rgb: np.ndarray) -> Captured:
        """Store a sample of ``class_name`` from a frame and update the head.

        The sample is on disk before this returns; if storing fails nothing changes. A class
        over ``max_samples_per_class`` then drops samples (their ids are in the result).
        """
        self.store.add_class(class_name)  # a refused class costs no inference
        views = embed_views(self.backbone, rgb, self.augmentation)
        name, sample_id = self.add_views(class_name, views, rgb)
        dropped: List[str] = []
        if self.max_samples_per_class is not None:
            dropped = over_limit(self.store, name, self.max_samples_per_class, self.drop_policy)
            if dropped:
                for sid in dropped:
                    self.store.remove_sample(name, sid)
                log.warning("class %r is over head.max_samples_per_class (%d): dropped %d "
                            "samples (%s)", name, self.max_samples_per_class, len(dropped),
                            self.drop_policy)
                self.changed()
        return Captured(name, sample_id, views[0], dropped)

    def add_views(self, class_name: str, views: np.ndarray,
                  thumbnail: Optional[np.ndarray] = None):
        """Store embedded views as a sample and update the head; (class name as stored,
        sample id)."""
        name = self.store.add_class(class_name)
        sample_id = self.store.add_sample(name, views, thumbnail)
        head = self.head
        if head is not None and not self.multilabel and \
                list(head.classes) == self.store.classes[:len(head.classes)]:
            t0 = time.perf_counter()
            try:
                if name not in head.classes:
                    head.add_class(name)
                self._head_add(head, name, sample_id, views)
            except (HeadError, ValueError) as exc:  # the sample is stored: the head follows
                log.warning("the head could not take the new sample in (%s); refitting", exc)
                self._job = None  # (a refit under way would be reconciled the same way)
                self.fit()
                return name, sample_id
            self._rows.append(sample_id)
            self.last_fit_ms = (time.perf_counter() - t0) * 1000
            self._dirty = True
            self._calibrate_later()
        elif self._job is not None and self._job.kind == "refit":
            pass  # the refit under way takes the new sample in when it is swapped in
        else:
            self.fit()
        return name, sample_id

    def changed(self) -> None:
        """Call after deleting, clearing, renaming samples or classes in the store.

        With the ``auto`` head a few removals are downdated at once; anything bigger (a class
        cleared, deleted or renamed) is refitted in a background thread while the current head
        keeps answering, and swapped in by :meth:`poll`. Other heads refit here.
        """
        if len(self.store) == 0:
            self.head, self._rows = None, []
            self._job = None
            if self.state.write:
                self.wait_saved()  # a save under way would write the head back
                self.state.remove_head()
            return
        if not self._budgeted():
            self.fit()
            return
        if self._job is not None and self._job.kind == "refit":
            return  # poll() brings the refitted head up to the store, or refits again
        if self._downdate(self.head):
            self._dirty = True
            self._calibrate_later()
            return
        self._refit_later()

    # -- background work (the auto head) -------------------------------------------------------
    def _budgeted(self) -> bool:
        return self.head is not None and not self.multilabel and hasattr(self.head, "calibration_job")

    def _store_rows(self) -> List[str]:
        return [sid for name in self.store.classes for sid in self.store.sample_ids(name)]

    def _downdate(self, head, rows: Optional[List[str]] = None, limit: int = INLINE_CHANGES) -> bool:
        """Bring ``head`` (holding ``rows``) up to the store with removals and additions, if
        the classes still agree and the changes (removals plus additions) are few; False (head
        untouched) otherwise."""
        rows = self._rows if rows is None else rows
        classes = self.store.classes
        if list(head.classes) != classes[:len(head.classes)]:
            return False
        where = {sid: name for name in classes for sid in self.store.sample_ids(name)}
        names = head.classes
        labels = head.labels
        gone = [i for i, sid in enumerate(rows) if where.get(sid) != names[labels[i]]]
        kept = [sid for i, sid in enumerate(rows) if where.get(sid) == names[labels[i]]]
        known = set(kept)
        added = sum(1 for sid in where if sid not in known)
        if len(gone) + added > limit or len(gone) == len(rows):
            return False  # e.g. a fleet's newcomer receiving thousands: refit off the loop
        if gone:
            head.remove_many(gone)
        for sid, name in where.items():
            if sid not in known:
                if name not in head.classes:
                    head.add_class(name)
                self._head_add(head, name, sid, self.store.views(name, sid))
                kept.append(sid)
        if rows is self._rows:
            self._rows = kept
        else:
            rows[:] = kept
        return True

    def _head_add(self, head, name: str, sample_id: str, views: np.ndarray) -> None:
        """``head.add`` of a stored sample; a head that reads its points from the store keeps
        a reference to the store's sample rather than a copy."""
        kw = {"item": self.store.stored_views(name, sample_id)} \
            if getattr(head, "points_from_store", False) else {}
        head.add(views[0], list(head.classes).index(name),
                 views=views[1:] if len(views) > 1 else None, **kw)

    def _calibrate_later(self) -> None:
        head = self.head
        if not self._budgeted() or not head.calibration_stale or self._job is not None:
            return
        if not self.state.write:  # a read-only command: the saved calibration serves, nothing
            return  # could be saved, and the samples would have to be read for it
        if head.n_orphans:  # removed samples keep their landmarks: pick fresh ones
            self._refit_later()
            return
        self._job = _Background("calibrate", head.calibration_job())

    def _refit_later(self) -> None:
        classes = self.store.classes
        rows, blocks, labels = [], [], []
        for label, name in enumerate(classes):
            for sid in self.store.sample_ids(name):
                rows.append(sid)
                blocks.append(self.store.stored_views(name, sid))  # no copy: read as it fits
                labels.append(label)
        head_name = self.head_name

        def refit():
            head = make_head(head_name)
            _fit(head, ViewRows(blocks), np.asarray(labels), classes)
            return head, rows
        self._job = _Background("refit", refit)

    def poll(self) -> bool:
        """Install finished background work (a recalibration or a refit); True if it did.
        :meth:`predict_embedding` calls it, so the device loop need not."""
        job = self._job
        if job is None or not job.done.is_set():
            return False
        self._job = None
        if job.error is not None:
            log.warning("background head update failed (%s); refitting", job.error)
            self.fit()
            return True
        if job.kind == "refit":
            head, rows = job.result
            if self._downdate(head, rows):
                self.head, self._rows = head, rows
                self._dirty = True
            else:  # many more changes meanwhile, or other classes: refit again
                if list(head.classes) == self.store.classes[:len(head.classes)]:
                    self.head, self._rows = head, rows  # newer than the head answering now
                    self._dirty = True
                self._refit_later()
                return True
        elif self.head is not None:
            self.head.apply_calibration(job.result)
            self._dirty = True
        self._calibrate_later()
        return True

    def wait_background(self, timeout: Optional[float] = None) -> None:
        """Finish the background work now (tests, and before a final save)."""
        while self._job is not None:
            if not self._job.done.wait(timeout):
                return
            self.poll()

    # -- predicting ----------------------------------------------------------------------------
    def predict_embedding(self, embedding: np.ndarray) -> Prediction:
        if self._job is not None:
            self.poll()
        if self.head is None:
            return NO_CLASSES
        head = self.head
        labels, proba, unknown = head.predict_detailed(embedding[None])
        p = proba[0]
        best = int(np.argmax(p))
        names = list(head.classes)
        scores = {n: float(v) for n, v in zip(names, p)}
        score, threshold = float(unknown[0]), float(head.unknown_threshold)
        if self.multilabel:  # every class above its threshold; none: unknown
            active = [n for n, on in zip(names, labels[0]) if on]
            confidence = min((scores[n] for n in active), default=float(p[best]))
            return Prediction(";".join(active) if active else UNKNOWN, confidence, scores,
                              not active, names[best], embedding, score, threshold)
        rejected = int(labels[0]) < 0
        return Prediction(UNKNOWN if rejected else names[best], float(p[best]), scores, rejected,
                          names[best], embedding, score, threshold)

    def predict(self, rgb: np.ndarray) -> Prediction:
        return self.predict_embedding(self.backbone.embed(rgb))


#: head.npz's array of each sample's checksum (a head that reads its points from the store).
SAMPLE_CRC = "edge_classifier_sample_crc"


def sample_checksums(items) -> np.ndarray:
    """CRC-32 (N uint32) of each sample in the store's in-memory form: its indices or values
    and, once for each shared table, the table (about 1 us a sample)."""
    tables: dict = {}
    out = np.empty(len(items), np.uint32)
    for i, item in enumerate(items):
        if isinstance(item, CompactViews):
            if item._crc is None:  # (a shared table's samples have theirs from the start)
                start = tables.get(id(item.values))
                if start is None:
                    start = tables[id(item.values)] = zlib.crc32(np.ascontiguousarray(item.values))
                item.checksum(start)
            out[i] = item._crc
        else:
            out[i] = zlib.crc32(np.ascontiguousarray(item))
    return out


def _polite_checksums(items, chunk: int = 256) -> np.ndarray:
    """:func:`sample_checksums` a chunk at a time, letting other threads run between chunks
    (Python holds the GIL through the loop; a thread waiting for it would otherwise wait a
    whole switch interval, 5 ms, each time: the device loop, while a save runs beside it)."""
    parts = []
    for start in range(0, len(items), chunk):
        parts.append(sample_checksums(items[start:start + chunk]))
        time.sleep(0)  # releases the GIL: a waiting thread takes it now
    return np.concatenate(parts) if parts else np.empty(0, np.uint32)


def _fit(head, views, y, names) -> None:
    """``head.fit`` on NxVxD views: an array, or a :class:`ViewRows` (read in chunks by a head
    that can, expanded here for one that cannot)."""
    if isinstance(views, ViewRows):
        if hasattr(head, "fit_rows"):
            head.fit_rows(views, y, names)
            return
        views = views.take(slice(None))
    head.fit(views[:, 0], y, names, views=views[:, 1:] if views.shape[1] > 1 else None)


class _Background:
    """One piece of work in a daemon thread: ``done`` is set when ``result`` (or ``error``)
    is there. ``EDGE_CLASSIFIER_SYNC_HEAD=1`` runs it at once in the caller's thread."""

    def __init__(self, kind: str, work) -> None:
        self.kind, self.result, self.error = kind, None, None
        self.done = threading.Event()
        if os.environ.get("EDGE_CLASSIFIER_SYNC_HEAD") == "1":
            self._run(work)
        else:
            threading.Thread(target=self._run, args=(work,), name=f"head-{kind}",
                             daemon=True).start()

    def _run(self, work) -> None:
        try:
            self.result = work()
        except Exception as exc:  # reported by Learner.poll, which refits
            self.error = exc
        finally:
            self.done.set()


def require_samples(store) -> None:
    if len(store) == 0:
        raise StoreError(f"{store.root} holds no samples yet; teach it first "
                         "('edge-classifier train DIR' or capture with the buttons)")
