"""The learner: backbone, sample store and head wired together.

It is what ``train`` and ``predict`` use, and what the device loop calls on every frame and
every capture::

    learner = Learner(backbone, SampleStore(state_dir, backbone.identity))
    learner.capture("apple", frame)      # stored durably, head updated at once
    p = learner.predict(frame)           # Prediction(label="apple", confidence=0.97, ...)

The head is saved as ``head.npz`` (arrays) + ``head.json`` (metadata: head name, classes, the
backbone's identity and the samples' fingerprint). A head file that is missing, corrupt, from
another backbone or older than the samples is rebuilt from the samples, and ``problems`` says why.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from edge_classifier.core import atomic, blas
from edge_classifier.learning.augment import Augmentation, embed_views
from edge_classifier.errors import HeadLoadError, StoreError
from edge_classifier.learning.heads import load_head, make_head
from edge_classifier.core.names import UNKNOWN
from edge_classifier.learning.store import SampleStore, storage_errors

HEAD_ARRAYS = "head.npz"
HEAD_META = "head.json"


@dataclass(frozen=True)
class Prediction:
    label: str  # a class name, or "unknown"
    confidence: float  # calibrated probability of ``label`` (of the best class if unknown)
    scores: Dict[str, float]  # calibrated probability of every class
    unknown: bool  # True when the open-set test rejected the frame
    best: Optional[str] = None  # the most likely class even when rejected
    embedding: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {"label": self.label, "confidence": round(self.confidence, 4),
                "scores": {k: round(v, 4) for k, v in self.scores.items()},
                "unknown": self.unknown}


NO_CLASSES = Prediction(UNKNOWN, 0.0, {}, True)


class Learner:
    """Learns from captured frames and predicts on new ones; see the module docstring."""

    def __init__(self, backbone, store: SampleStore, head_name: str = "auto",
                 augmentation: Augmentation = Augmentation(), load: bool = True):
        self.backbone = backbone
        self.store = store
        self.head_name = head_name
        self.augmentation = augmentation
        self.head = None
        self.multilabel = head_name == "multilabel"
        self.problems: List[str] = list(store.problems)
        self.last_fit_ms = 0.0
        self._dirty = False
        if load:
            self.load_or_fit()

    # -- fitting -------------------------------------------------------------------------------
    def fit(self) -> None:
        """Fit the head on every stored sample (classes without samples are left out)."""
        if self.multilabel:
            views, y, names = self.store.multilabel_matrix()
        else:
            views, y, names = self.store.samples_matrix()
        if len(y) == 0:
            self.head = None
            return
        head = make_head(self.head_name)
        t0 = time.perf_counter()
        # Classes without samples are kept by the head (never predicted) so labels stay aligned.
        with blas.threads(None):  # every core for the fit (the device runs BLAS on one)
            head.fit(views[:, 0], y, names, views=views[:, 1:] if views.shape[1] > 1 else None)
        self.last_fit_ms = (time.perf_counter() - t0) * 1000
        self.head = head
        self._dirty = True

    def load_or_fit(self) -> None:
        """Use the saved head if it matches the samples, else fit a new one."""
        try:
            head = self.load_saved_head()
        except HeadLoadError as exc:
            self.problems.append(f"{exc}; rebuilding the head from the samples")
            head = None
        if head is None:
            self.fit()
            if self.head is not None:
                self.save()
        else:
            self.head = head

    def load_saved_head(self):
        """The saved head, None if there is none or it is stale; HeadLoadError if unusable."""
        root = self.store.root
        meta_path, arrays_path = root / HEAD_META, root / HEAD_ARRAYS
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
            with np.load(arrays_path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            ours = meta["edge_classifier"]
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise HeadLoadError(f"{arrays_path}: head file is corrupt or incomplete ({exc})") from None
        backbone = ours.get("backbone", {})
        if backbone.get("sha256") != self.backbone.identity["sha256"]:
            raise HeadLoadError(f"{arrays_path}: head was trained on {backbone.get('model')}, "
                                f"not {self.backbone.name}")
        if ours.get("fingerprint") != self.store.fingerprint() or ours.get("head") != self.head_name:
            return None  # samples changed since it was saved: refit
        try:
            return load_head(arrays, meta["head_meta"])
        except (ValueError, KeyError, TypeError) as exc:
            raise HeadLoadError(f"{arrays_path}: head cannot be loaded ({exc})") from None

    def save(self) -> None:
        """Write the head atomically (arrays first, then the metadata that names them)."""
        if self.head is None:
            return
        arrays, head_meta = self.head.to_state()
        meta = {"head_meta": head_meta,
                "edge_classifier": {"head": self.head_name, "backbone": self.backbone.identity,
                                    "fingerprint": self.store.fingerprint(),
                                    "augmentation": self.augmentation.key()}}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with storage_errors("the head"):
            atomic.write_bytes(self.store.root / HEAD_ARRAYS, buf.getvalue())
            atomic.write_text(self.store.root / HEAD_META, json.dumps(meta))
        self._dirty = False

    @property
    def dirty(self) -> bool:
        """The head changed since it was last saved."""
        return self._dirty

    # -- learning from frames ------------------------------------------------------------------
    def capture(self, class_name: str, rgb: np.ndarray) -> str:
        """Store a sample of ``class_name`` from a frame and update the head; returns its id.

        The sample is on disk before this returns; if storing fails nothing changes.
        """
        views = embed_views(self.backbone, rgb, self.augmentation)
        return self.add_views(class_name, views, rgb)

    def add_views(self, class_name: str, views: np.ndarray,
                  thumbnail: Optional[np.ndarray] = None) -> str:
        sample_id = self.store.add_sample(class_name, views, thumbnail)
        head = self.head
        if head is not None and not self.multilabel and \
                list(head.classes) == self.store.classes[:len(head.classes)]:
            t0 = time.perf_counter()
            if class_name not in head.classes:
                head.add_class(class_name)
            head.add(views[0], list(head.classes).index(class_name),
                     views=views[1:] if len(views) > 1 else None)
            self.last_fit_ms = (time.perf_counter() - t0) * 1000
            self._dirty = True
        else:
            self.fit()
        return sample_id

    def changed(self) -> None:
        """Call after deleting, clearing, renaming samples or classes in the store."""
        self.fit()
        if self.head is None:
            for name in (HEAD_ARRAYS, HEAD_META):
                (self.store.root / name).unlink(missing_ok=True)

    # -- predicting ----------------------------------------------------------------------------
    def predict_embedding(self, embedding: np.ndarray) -> Prediction:
        if self.head is None:
            return NO_CLASSES
        labels, proba = self.head.predict(embedding[None])
        p = proba[0]
        best = int(np.argmax(p))
        names = list(self.head.classes)
        scores = {n: float(v) for n, v in zip(names, p)}
        if self.multilabel:  # every class above its threshold; none: unknown
            active = [n for n, on in zip(names, labels[0]) if on]
            confidence = min((scores[n] for n in active), default=float(p[best]))
            return Prediction(";".join(active) if active else UNKNOWN, confidence, scores,
                              not active, names[best], embedding)
        rejected = int(labels[0]) < 0
        return Prediction(UNKNOWN if rejected else names[best], float(p[best]), scores, rejected,
                          names[best], embedding)

    def predict(self, rgb: np.ndarray) -> Prediction:
        return self.predict_embedding(self.backbone.embed(rgb))


def require_samples(store: SampleStore) -> None:
    if len(store) == 0:
        raise StoreError(f"{store.root} holds no samples yet; teach it first "
                         "('edge-classifier train DIR' or capture with the buttons)")
