"""What the device does between frames: the events (:mod:`edge_classifier.comms.events`)
that buttons, the keyboard, MQTT commands, the web studio and the fleet put on
:attr:`Device.events <edge_classifier.device.loop.Device.events>`, applied on the loop's thread::

    device.post(ev.Capture(origin="mqtt", class_name="apple"))
    device.apply_events()        # the loop calls this before each frame
    device.step(frame)           # the pending capture takes this frame

:class:`DeviceActions` is mixed into :class:`~edge_classifier.device.loop.Device`, whose parts
(store, learner, bus, smoother, counters, panel, studio, fleet) it uses; every answer goes back
to the transport that asked, through the bus.
"""

from __future__ import annotations

import io
import logging
import queue
from typing import List, Optional

import numpy as np
from PIL import Image

from edge_classifier.comms import events as ev
from edge_classifier.comms.commands import result as command_result
from edge_classifier.comms.fleet import FleetWork
from edge_classifier.core.names import class_key
from edge_classifier.errors import EdgeClassifierError, EventError

log = logging.getLogger("edge_classifier.device")


class DeviceActions:
    """The event handling of :class:`~edge_classifier.device.loop.Device` (see the module)."""

    def apply_events(self) -> None:
        """Apply queued events (the loop does this between frames)."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self.settle()  # the frame in flight is finished before an event changes anything
            self.counters.events += 1
            try:
                self._apply(event)
            except EdgeClassifierError as exc:
                self.counters.event_errors += 1
                log.warning("%s: %s", type(event).__name__, exc)
                self._answer(event, False, str(exc))
            except Exception as exc:  # a bug must not stop the device
                self.counters.event_errors += 1
                log.exception("event %r failed", event)
                self._answer(event, False, f"internal error: {exc}")

    def _apply(self, event: ev.Event) -> None:
        store = self.store
        if isinstance(event, ev.Stop):
            self._stop.set()
            self._answer(event, True)
        elif isinstance(event, ev.Capture):
            if event.origin == "button" and any(p.class_name == event.class_name
                                                 for p in self._pending):
                self.counters.dropped_captures += 1  # one pending capture per held button
                return
            self._pending.append(event)
        elif isinstance(event, (ev.DeleteLast, ev.ClearClass)):
            name = event.class_name or self._last_captured
            if name is None:
                raise EventError("no class given and nothing captured yet")
            name = store.resolve(name)
            if isinstance(event, ev.DeleteLast):
                sid = store.delete_last(name)
                self._changed()
                self._answer(event, True, **{"class": name, "deleted": sid})
            else:
                count = store.clear_class(name)
                self._changed()
                self._answer(event, True, **{"class": name, "deleted": count})
        elif isinstance(event, (ev.RenameClass, ev.DeleteClass)):
            name = store.resolve(event.class_name)
            if class_key(name) in {class_key(c.name) for c in self.config.classes}:
                raise EventError(f"class {name!r} is bound to a button in the config; change "
                                 "it there")
            if isinstance(event, ev.RenameClass):
                new = store.rename_class(name, event.new_name)
                self._retarget_pending(name, new)
                self._changed()
                self._answer(event, True, **{"class": name, "to": new})
            else:
                count = store.delete_class(name)
                self._retarget_pending(name, None)
                self._changed()
                self._answer(event, True, **{"class": name, "deleted": count})
        elif isinstance(event, ev.Snapshot):
            if self._frame is None:
                raise EventError("no frame yet")
            out = io.BytesIO()
            Image.fromarray(self._frame).save(out, "JPEG", quality=85)
            self.bus.publish_snapshot(out.getvalue())
            self._answer(event, True, bytes=out.tell())
        elif isinstance(event, FleetWork):  # the group's changes, applied on this thread
            if self.fleet is not None and self.fleet.work():
                self._changed()
        elif self.studio.handles(event):  # the web studio's and the newer commands
            self._answer(event, True, **self.studio.apply(event))
        else:
            raise EventError(f"unsupported event {type(event).__name__}")

    def _retarget_pending(self, old: str, new: Optional[str]) -> None:
        """Captures still to come for a renamed class follow it; for a deleted class they
        are cancelled (answered), so a later frame never re-creates what was deleted."""
        kept: List[ev.Capture] = []
        for p in self._pending:
            if class_key(p.class_name) != class_key(old):
                kept.append(p)
            elif new is not None:
                kept.append(ev.Capture(origin=p.origin, request_id=p.request_id,
                                       class_name=new, count=p.count))
            else:
                self._answer(p, False, f"cancelled: class {old!r} was deleted")
        self._pending = kept

    def _capture(self, frame: np.ndarray) -> Optional[np.ndarray]:
        """Apply the first pending capture to this frame; returns the frame's embedding if it
        was embedded (so the prediction need not embed it again), else None."""
        event = self._pending[0]
        now = self.clock.now()
        name = event.class_name
        min_gap = 1.0 / self.config.gpio.hold_rate
        # 10 % slack, so the repeats of a held button (jittery, every 1/hold_rate) all count
        if event.origin == "button" and \
                now - self.counters.last.get("capture:" + name, -1e9) < 0.9 * min_gap:
            # Rate limit: a bouncing or held button cannot capture faster than hold_rate. The
            # press is dropped, not deferred: a later frame may no longer show the object.
            self._pending.pop(0)
            self.counters.dropped_captures += 1
            return None
        try:
            done = self.learner.capture(name, frame)
        except EdgeClassifierError as exc:  # store, class limit, head: the loop goes on
            self._pending.pop(0)
            self._dropped_in_request = 0
            self.counters.capture_errors += 1
            log.error("capture for %r refused: %s", name, exc)
            self._answer(event, False, str(exc))
            return None
        name = done.class_name
        self.counters.captures += 1
        self.counters.dropped_samples += len(done.dropped)
        self.counters.last["capture:" + name] = now
        self._last_captured = name
        if done.dropped:
            self.smoother.reset()
        if self.panel is not None:
            self.panel.blink_capture(name)
        remaining = event.count - 1
        self._dropped_in_request += len(done.dropped)
        if remaining > 0:
            self._pending[0] = ev.Capture(origin=event.origin, request_id=event.request_id,
                                          class_name=name, count=remaining)
            return done.embedding
        self._pending.pop(0)
        self.bus.set_classes(self.store.classes)
        dropped, self._dropped_in_request = self._dropped_in_request, 0
        self._answer(event, True, **{"class": name, "sample": done.sample_id,
                                     "dropped": dropped,
                                     "samples": self.store.counts().get(name, 0)})
        return done.embedding

    def _changed(self) -> None:
        self.learner.changed()
        self.smoother.reset()
        self.bus.set_classes(self.store.classes)

    def _answer(self, event: ev.Event, ok: bool, error: Optional[str] = None, **details) -> None:
        action = {"Capture": "capture", "DeleteLast": "delete_last", "ClearClass": "clear_class",
                  "DeleteClass": "delete_class", "RenameClass": "rename_class",
                  "Snapshot": "snapshot", "Stop": "stop"}.get(type(event).__name__,
                                                              getattr(event, "ACTION", "?"))
        answer = command_result(action, ok, error if not ok else None, event.request_id,
                                **details)
        if not self.bus.answer(event, answer) and not ok:
            log.info("%s from %s: %s", action, event.origin, error)
