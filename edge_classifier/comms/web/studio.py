"""What the web page asks of the device, done on the device loop's thread.

The loop is the only thing that runs the model and changes the state, so every action the page
takes is an event, applied between two frames like a button press. The JSON-able ones are
commands (:mod:`~edge_classifier.comms.commands`: capture, add_class, delete_sample,
file_inbox, ...; this applies the new ones, the loop the older ones);
the ones below carry pictures or ask for reports, so only the web transport makes them::

    studio = Studio(learner, inbox, max_samples_per_class=500, changed=..., stored=...,
                    stats=device.stats)
    if studio.handles(event):
        details = studio.apply(event)      # the result's fields; raises EdgeClassifierError

``changed()`` is called after samples were removed or imported (the head is refitted),
``stored()`` after one sample was added (the head absorbed it already). A result may carry
work too heavy for the loop's thread under ``LATER``: a function, safe in another thread, whose
dict the web server adds to the answer (:func:`finish`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple

import numpy as np

from edge_classifier.comms.events import AddClass, DeleteSample, DiscardInbox, Event, FileInbox
from edge_classifier.comms.web.insight import insight
from edge_classifier.datasets.importer import import_files
from edge_classifier.errors import EventError, UnknownClassError

#: The key of a result's work left for another thread (see the module docstring).
LATER = "later"


def finish(result: Dict[str, Any]) -> Dict[str, Any]:
    """``result`` with the work under ``LATER`` (if any) done here and its fields added."""
    later = result.pop(LATER, None)
    return result if later is None else dict(result, **later())


@dataclass(frozen=True)
class PredictImage(Event):
    """Predict one picture; nothing is stored."""

    ACTION: ClassVar[str] = "predict"
    image: Optional[np.ndarray] = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ImportImages(Event):
    """Import uploaded files into a class, the way ``train`` imports a data set. ``files``
    are (staged path, name shown to the user); ``folder`` (the staging folder) is removed
    afterwards. An upload is imported one picture per frame (:mod:`~.jobs`): its steps but
    the last have ``refit=False``, so the head is refitted once, after the last."""

    ACTION: ClassVar[str] = "import"
    class_name: str = ""
    files: Tuple[Tuple[str, str], ...] = ()
    folder: str = ""
    refit: bool = True


@dataclass(frozen=True)
class ReadInsight(Event):
    """The confusion matrix of the head's leave-one-out predictions."""

    ACTION: ClassVar[str] = "insight"


@dataclass(frozen=True)
class ListExport(Event):
    """Every sample's thumbnail, by class: what ``export`` writes."""

    ACTION: ClassVar[str] = "export"


@dataclass(frozen=True)
class ReadStats(Event):
    """The device's counters (what it publishes on ``<base>/stats``)."""

    ACTION: ClassVar[str] = "stats"


def describe(prediction: Dict[str, Any]) -> str:
    """A prediction in words: ``98 % sure it's apple``."""
    confidence = round(100 * float(prediction.get("confidence") or 0))
    closest = prediction.get("closest")
    if not prediction.get("scores"):
        return "nothing taught yet: add a class and give it a few pictures"
    if prediction.get("unknown"):
        return f"not sure: closest is {closest} ({confidence} %), but not close enough"
    return f"{confidence} % sure it's {prediction.get('label')}"


class Studio:
    """Applies the studio's events; see the module docstring."""

    EVENTS = (PredictImage, ImportImages, ReadInsight, ListExport, ReadStats, FileInbox,
              DiscardInbox, AddClass, DeleteSample)

    def __init__(self, learner, inbox=None, *, max_samples_per_class: Optional[int] = None,
                 changed: Callable[[], None], stored: Callable[[], None],
                 stats: Callable[[], Dict[str, Any]]):
        self.learner = learner
        self.inbox = inbox
        self.max_samples_per_class = max_samples_per_class
        self.changed = changed
        self.stored = stored
        self.stats = stats
        self._unfitted = False  # samples imported since the head was last refitted

    def handles(self, event: Event) -> bool:
        return isinstance(event, self.EVENTS)

    def apply(self, event: Event) -> Dict[str, Any]:
        if isinstance(event, PredictImage):
            if event.image is None:
                raise EventError("no picture to predict")
            prediction = self.learner.predict(event.image).as_dict()
            return dict(prediction, text=describe(prediction))
        if isinstance(event, ImportImages):
            return self._import(event)
        if isinstance(event, (FileInbox, DiscardInbox)):
            return self._inbox(event)
        store = self.learner.store
        if isinstance(event, AddClass):
            name = store.add_class(event.class_name)
            self.stored()
            return {"class": name, "samples": store.counts()[name]}
        if isinstance(event, DeleteSample):
            name = store.resolve(event.class_name)
            store.remove_sample(name, event.sample_id)
            self.changed()
            return {"class": name, "deleted": event.sample_id, "samples": store.counts()[name]}
        if isinstance(event, ReadInsight):
            return self._insight()
        if isinstance(event, ListExport):
            files = [(name, str(path)) for name in store.classes for sid in store.sample_ids(name)
                     for path in [store.thumbnail_path(name, sid)] if path is not None]
            return {"files": files}
        if isinstance(event, ReadStats):
            return {"stats": self.stats()}
        raise EventError(f"unsupported event {type(event).__name__}")

    def _import(self, event: ImportImages) -> Dict[str, Any]:
        try:
            paths = [path for path, _ in event.files]
            report = import_files(self.learner, paths, [[event.class_name]] * len(paths),
                                  max_samples_per_class=self.max_samples_per_class,
                                  use_cache=False)
        finally:
            if event.folder:
                shutil.rmtree(event.folder, ignore_errors=True)
        if event.refit and (report.added or self._unfitted):
            self._unfitted = False
            self.changed()
        elif report.added:  # the head waits for the upload's last picture
            self._unfitted = True
            self.stored()
        failed = []
        for line in report.failed:  # name the files as the user knows them, not where staged
            for path, shown in event.files:
                line = line.replace(path, shown)
            failed.append(line)
        store = self.learner.store
        try:
            name = store.resolve(event.class_name)  # the stored spelling
        except UnknownClassError:  # nothing could be imported
            name = event.class_name
        return {"class": name, "added": report.added, "skipped": report.skipped,
                "failed": failed, "over_limit": sum(report.over_limit.values()),
                "refused": bool(report.classes_refused),
                "samples": store.counts().get(name, 0)}

    def _inbox(self, event) -> Dict[str, Any]:
        if self.inbox is None:
            raise EventError("there is no inbox: it comes with the web studio (web.listen)")
        if isinstance(event, DiscardInbox):
            self.inbox.remove(event.item)
            return {"item": event.item}
        frame = self.inbox.load(event.item)
        done = self.learner.capture(event.class_name, frame)
        self.inbox.remove(event.item)  # only once the sample is stored: nothing is lost
        self.stored()
        return {"item": event.item, "class": done.class_name, "sample": done.sample_id,
                "samples": self.learner.store.counts().get(done.class_name, 0)}

    def _insight(self) -> Dict[str, Any]:
        head = self.learner.head
        if head is None:
            return insight(self.learner.store.classes, np.zeros(0), np.zeros((0, 0)))
        if self.learner.multilabel:
            raise EventError("the insight needs a single-label head (this state is "
                             "multi-label)")
        job = getattr(head, "loo_proba_job", None)
        if job is None:
            return insight(head.classes, head.labels, head.loo_proba())
        # the held-out scores are computed off the loop's thread (seconds at 10,000 samples):
        # the answer carries the work, which the web server runs in a thread of its own
        classes, labels, proba = list(head.classes), head.labels.copy(), job()
        return {LATER: lambda: insight(classes, labels, proba())}
