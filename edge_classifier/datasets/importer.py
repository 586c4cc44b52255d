"""Importing a data set into a state: what ``train`` does, and what the web page's uploads do.

Each file's record (file key, the sample id it gets, its labels) is appended to the state's
import journal and fsynced *before* its sample is written, so an import killed at any moment
resumes exactly: a file whose sample landed is skipped, one whose sample did not is stored
again under the same id; nothing is duplicated. A file is known by its real path (a data set
reached through a link or another path is the same data set), and a picture whose views a
class already holds byte for byte is not stored again (the same file twice in a CSV, a copy,
an import list that was lost). Embeddings go through the incremental cache
(:mod:`~edge_classifier.datasets.embedcache`), so no embedding work is repeated either::

    report = import_dataset(learner, "photos/", max_samples_per_class=500, progress=True)
    report.added, report.skipped, report.over_limit   # {"paper": 94}
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from edge_classifier.core.names import class_key
from edge_classifier.datasets.embedcache import embed_files
from edge_classifier.datasets.folders import read_csv, scan_folder
from edge_classifier.errors import DatasetError, ImageError
from edge_classifier.frames.images import load_image


@dataclass
class ImportReport:
    added: int = 0
    skipped: int = 0  # already imported
    failed: List[str] = field(default_factory=list)  # one line per unreadable file
    over_limit: Dict[str, int] = field(default_factory=dict)  # class -> files not imported
    classes_refused: List[str] = field(default_factory=list)  # past head.max_classes


def load_dataset(path: str) -> Tuple[List[str], List[List[str]], List[str]]:
    """(paths, label lists, class names) of a folder data set or a ``file,labels`` CSV."""
    if os.path.isfile(path) and path.lower().endswith(".csv"):
        data = read_csv(path)
        return data.paths, data.label_sets, data.class_names
    data = scan_folder(path)
    return data.paths, [[data.class_names[i]] for i in data.labels], data.class_names


def is_multilabel(label_sets: Sequence[Sequence[str]]) -> bool:
    return any(len(s) != 1 for s in label_sets)


def dataset_views(dataset: str, backbone, augmentation, progress: bool = False,
                  on_error: Optional[Callable[[str], None]] = None):
    """(NxVxD views, N labels, class names, errors) of a single-label data set, cached."""
    paths, label_sets, class_names = load_dataset(dataset)
    if is_multilabel(label_sets):
        raise DatasetError(f"{dataset}: needs one label per file (a folder data set)")
    y = np.array([class_names.index(s[0]) for s in label_sets], dtype=np.int64)
    views, ok, errors = embed_files(backbone, paths, augmentation, progress=progress,
                                    on_error=on_error)
    return views, y[ok], class_names, errors


def import_files(learner, paths: Sequence[str], label_sets: Sequence[Sequence[str]], *,
                 max_samples_per_class: Optional[int] = None, thumbnails: bool = True,
                 progress: bool = False, use_cache: bool = True,
                 on_error: Optional[Callable[[str], None]] = None) -> ImportReport:
    """Store ``paths`` (with their labels) as samples of ``learner``'s state; resumable.

    A class never takes more than ``max_samples_per_class`` samples here: the files past it
    are left out and counted in ``over_limit`` (nothing stored is dropped to make room).
    The head is not refitted: call ``learner.fit()`` and ``learner.save()`` after.
    ``use_cache=False`` skips the embedding cache (files that are imported once, such as the
    web page's uploads, would only fill it).
    """
    state, store = learner.state, learner.store
    report = ImportReport()
    imported = state.read_imports()
    paths, label_sets = _within_class_limit(store, paths, label_sets, report)
    views, ok, errors = embed_files(learner.backbone, paths, learner.augmentation,
                                    progress=progress, use_cache=use_cache, on_error=on_error)
    report.failed.extend(errors)
    rows = iter(views)
    todo = [(p, list(ls), next(rows)) for p, ls, good in zip(paths, label_sets, ok) if good]
    counts = {class_key(n): c for n, c in store.counts().items()}
    stored = stored_digests(store)
    with state.import_journal() as journal:
        for path, labels, sample_views in tqdm(todo, desc="storing", unit="sample", leave=False,
                                               disable=None if progress else True):
            # the file, whatever its size and time, whatever link or path led to it: one sample
            key = os.path.realpath(path)
            previous = imported.get(key) or imported.get(os.path.abspath(path))
            prev_id = previous["id"] if previous else None
            digest = views_digest(sample_views)
            # the id under which each label already holds this file: its own (this or an
            # earlier import), or the same picture's (a copy, a lost import list)
            have = {label: prev_id if prev_id and store.has_sample(label, prev_id)
                    else stored.get(class_key(label), {}).get(digest) for label in labels}
            if all(have.values()):
                report.skipped += 1
                continue
            fresh = _admit(store, [x for x in labels if not have[x]], counts,
                           max_samples_per_class, report)
            if not fresh:
                continue
            thumb = None
            if thumbnails:
                try:
                    thumb = load_image(path, size_hint=learner.backbone.input_size)
                except ImageError:
                    pass
            # one sample for all the file's labels; an interrupted import gets its id again
            sid = next((v for v in have.values() if v), None) or prev_id or store.new_sample_id()
            holding = set(previous["labels"]) if prev_id == sid else set()
            entry = {"id": sid, "labels": sorted(holding | set(fresh) |
                                                 {x for x, v in have.items() if v == sid})}
            if previous != entry:
                journal.record(key, sid, entry["labels"])
            imported[key] = entry
            for label in fresh:
                if not store.has_sample(label, sid):
                    store.add_sample(label, sample_views, thumb, sample_id=sid)
                    counts[class_key(label)] = counts.get(class_key(label), 0) + 1
                stored.setdefault(class_key(label), {})[digest] = sid
            report.added += 1
    return report


def views_digest(views: np.ndarray) -> bytes:
    """What two samples' views are compared by: equal bytes, equal digest."""
    v = np.ascontiguousarray(views, dtype=np.float32)
    return hashlib.blake2b(repr(v.shape).encode() + v.tobytes(), digest_size=16).digest()


def stored_digests(store) -> Dict[str, Dict[bytes, str]]:
    """``{class key: {views digest: sample id}}`` of every stored sample."""
    return {class_key(name): {views_digest(store.views(name, sid)): sid
                              for sid in store.sample_ids(name)} for name in store.classes}


def _within_class_limit(store, paths: Sequence[str], label_sets: Sequence[Sequence[str]],
                        report: ImportReport) -> Tuple[List[str], List[List[str]]]:
    """The files with a label the store can take (an existing class, or a new one while the
    store is under ``max_classes``, in file order); the others are not even embedded, and
    the classes they name are reported refused."""
    known = {class_key(n) for n in store.classes}
    room = store.max_classes - len(known)
    kept_paths, kept_labels, refused = [], [], set(report.classes_refused)
    for path, labels in zip(paths, label_sets):
        usable = False
        for label in labels:
            k = class_key(label)
            if k not in known and room > 0:
                known.add(k)
                room -= 1
            if k in known:
                usable = True
            elif label not in refused:
                refused.add(label)
                report.classes_refused.append(label)
        if usable:
            kept_paths.append(path)
            kept_labels.append(list(labels))
    return kept_paths, kept_labels


def _admit(store, labels: List[str], counts: Dict[str, int], limit: Optional[int],
           report: ImportReport) -> List[str]:
    """The labels of one file that may still take a sample (class limit, class count)."""
    kept = []
    for label in labels:
        k = class_key(label)
        if limit is not None and counts.get(k, 0) >= limit:
            report.over_limit[label] = report.over_limit.get(label, 0) + 1
            continue
        if k not in counts and len(store.classes) >= store.max_classes:
            if label not in report.classes_refused:
                report.classes_refused.append(label)
            continue
        counts.setdefault(k, 0)
        kept.append(label)
    return kept
