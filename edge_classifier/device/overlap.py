"""The second half of a frame — head, smoother, publishing — on a thread of its own, while the
loop thread reads the next frame and runs the backbone on it (the invoke releases the GIL)::

    after = Overlap(finish)                  # one worker, one frame in flight
    after.submit(frame_no, embedding, t0)    # waits until the frame before is finished
    after.settle()                           # before anything else touches head or outputs

The backbone keeps its one inference thread (the loop's). At most one frame is in flight and
they finish in order, so outputs keep their order. Everything else that reads or changes the
head, the store, the smoother or the outputs — events, captures, the head's save, stats,
shutdown — runs on the loop thread after :meth:`Overlap.settle`, so the two threads never
touch them at once. An exception of the worker is raised on the loop thread by the next
``submit`` or ``settle``, as if the frame had been finished there.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional


class Overlap:
    """One worker thread calling ``finish(*args)`` for each frame handed over, in order."""

    def __init__(self, finish: Callable[..., None], name: str = "frame-finish"):
        self._finish = finish
        self._cv = threading.Condition(threading.Lock())
        self._job: Optional[tuple] = None  # the frame in flight
        self._error: Optional[BaseException] = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, *args) -> None:
        """Hand a frame over, once the one before it is finished."""
        with self._cv:
            while self._job is not None:
                self._cv.wait()
            self._raise()
            if self._closed:
                raise RuntimeError("the frame worker is closed")
            self._job = args
            self._cv.notify_all()

    def settle(self) -> None:
        """Wait until the frame in flight is finished (at once when none is)."""
        with self._cv:
            while self._job is not None:
                self._cv.wait()
            self._raise()

    @property
    def busy(self) -> bool:
        return self._job is not None

    def close(self) -> None:
        """Finish the frame in flight, then end the worker (its error, if any, is dropped:
        closing happens on the way out). Safe twice."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._closed:
                    self._cv.wait()
                if self._job is None:
                    return
                job = self._job
            try:
                self._finish(*job)
            except BaseException as exc:  # noqa: BLE001 - raised again on the loop thread
                with self._cv:
                    self._error = exc
            with self._cv:
                self._job = None
                self._cv.notify_all()
