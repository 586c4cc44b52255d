"""Uploads imported one picture per frame, so a big upload never stalls the live view.

The loop stays the only thread that runs the model: an upload becomes a job of one
:class:`~edge_classifier.comms.web.studio.ImportImages` event per picture. The first is posted
at once; each next one when the loop has answered the last *and* has processed a frame since
(``on_frame()``, called by the transport on the loop's thread), so at most one picture is
embedded between two frames. The request is answered when every picture is done; the page
follows the progress on the event stream (``upload``)::

    queue = UploadQueue(post, new_id, aloop, wake=lambda: transport._wake("upload"))
    result = await queue.run("apple", staged, folder)   # the server's loop; the sum of steps
    queue.on_frame()                                     # the loop's thread, once per frame
    queue.on_result(result)                              # the loop's thread: True if a step's
    queue.progress()                                     # {"uploads": [{"class", "done", ...}]}
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from edge_classifier.comms.commands import result as command_result
from edge_classifier.comms.web.studio import ImportImages

STEP_SECONDS = 30.0  # the longest the loop may take for one picture before the upload fails


@dataclass
class UploadJob:
    id: str
    class_name: str
    files: Sequence[Tuple[str, str]]  # (staged path, name shown)
    folder: str
    future: "asyncio.Future"
    done: int = 0  # steps answered
    due: bool = False  # the next step waits for a frame
    results: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.files)


class UploadQueue:
    """Uploads waiting to be imported, one picture per frame; see the module docstring."""

    def __init__(self, post: Callable[[Any], Any], new_id: Callable[[], str],
                 aloop: Callable[[], Optional[asyncio.AbstractEventLoop]],
                 wake: Callable[[], None]):
        self._post = post
        self._new_id = new_id
        self._aloop = aloop
        self._wake = wake
        self._jobs: List[UploadJob] = []  # in order; the first one is being imported
        self._lock = threading.Lock()  # the server's loop adds, the loop's thread advances
        self._steps = itertools.count(1)

    # -- the server's loop ---------------------------------------------------------------------
    async def run(self, class_name: str, files: Sequence[Tuple[str, str]],
                  folder: str) -> Dict[str, Any]:
        """Import ``files`` into ``class_name``; the summed result of its steps. Fails (with
        what was done so far) if the loop stops answering."""
        job = UploadJob(self._new_id(), class_name, tuple(files), folder,
                        asyncio.get_running_loop().create_future())
        with self._lock:
            self._jobs.append(job)
            first = len(self._jobs) == 1
        self._wake()
        if first:
            self._step(job)
        seen = -1
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(job.future), STEP_SECONDS)
            except asyncio.TimeoutError:
                if job.done == seen:  # no step answered meanwhile: the loop is stuck
                    self._drop(job)
                    return self._summary(job, timeout=True)
                seen = job.done

    def cancel_all(self, error: str) -> None:
        """(The server's loop) answer every waiting upload with ``error``."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            shutil.rmtree(job.folder, ignore_errors=True)
            if not job.future.done():
                job.future.set_result(self._summary(job, error=error))

    # -- the loop's thread ---------------------------------------------------------------------
    def on_frame(self) -> None:
        """A frame was processed: post the next picture of the upload that waits for one."""
        with self._lock:
            job = self._jobs[0] if self._jobs else None
            if job is None or not job.due:
                return
            job.due = False
        self._step(job)

    def on_result(self, result: Dict[str, Any]) -> bool:
        """The loop answered an event; True if it was a step of an upload (taken here)."""
        rid = str(result.get("id") or "")
        with self._lock:
            job = next((j for j in self._jobs if rid.startswith(j.id + "#")), None)
            if job is None:
                return False
            job.results.append(result)
            job.done += 1
            finished = job.done >= job.total or not result.get("ok")
            if finished:
                self._jobs.remove(job)
            # the next step (or the next upload's first) waits for the next frame
            nxt = job if not finished else self._jobs[0] if self._jobs else None
            if nxt is not None:
                nxt.due = True
        self._wake()
        if finished:
            if job.done < job.total:  # stopped early: the pictures not imported
                shutil.rmtree(job.folder, ignore_errors=True)
            loop = self._aloop()
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(_settle, job.future, self._summary(job))
        return True

    def waiting(self) -> int:
        """Uploads waiting or under way."""
        with self._lock:
            return len(self._jobs)

    def progress(self) -> Dict[str, Any]:
        """Every upload waiting or under way: class, pictures done, pictures in all."""
        with self._lock:
            return {"uploads": [{"class": j.class_name, "done": j.done, "total": j.total}
                                for j in self._jobs]}

    # -- machinery -----------------------------------------------------------------------------
    def _step(self, job: UploadJob) -> None:
        k = job.done
        last = k == job.total - 1
        event = ImportImages(origin="web", request_id=f"{job.id}#{next(self._steps)}",
                             class_name=job.class_name, files=(job.files[k],),
                             folder=job.folder if last else "", refit=last)
        try:
            self._post(event)
        except Exception as exc:  # noqa: BLE001 - the queue refused it
            self.on_result(command_result("import", False,
                                          f"the device could not take the upload ({exc})",
                                          event.request_id))

    def _drop(self, job: UploadJob) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)
        shutil.rmtree(job.folder, ignore_errors=True)  # a step still under way finds nothing

    @staticmethod
    def _summary(job: UploadJob, error: Optional[str] = None,
                 timeout: bool = False) -> Dict[str, Any]:
        results = job.results
        last_ok = next((r for r in reversed(results) if r.get("ok")), {})
        failed: List[str] = []
        for r in results:
            failed += r.get("failed", []) if r.get("ok") else [r.get("error", "failed")]
        added = sum(r.get("added", 0) for r in results if r.get("ok"))
        if timeout:
            error = (f"the device did not import a picture within {STEP_SECONDS:g} s "
                     f"({job.done} of {job.total} done; is it getting frames?)")
        elif error is None and results and not results[-1].get("ok"):
            error = results[-1].get("error")
        details = {"class": last_ok.get("class", job.class_name), "added": added,
                   "skipped": sum(r.get("skipped", 0) for r in results if r.get("ok")),
                   "failed": failed,
                   "over_limit": sum(r.get("over_limit", 0) for r in results if r.get("ok")),
                   "refused": any(r.get("refused") for r in results),
                   "samples": last_ok.get("samples", 0), "pictures": job.total}
        if timeout:
            details["timeout"] = True
        return command_result("import", error is None, error, job.id, **details)


def _settle(future: "asyncio.Future", value: Dict[str, Any]) -> None:
    if not future.done():
        future.set_result(value)
