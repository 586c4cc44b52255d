"""The device: one capture/inference thread wiring frame source → backbone → head → smoother →
the output bus, with the state directory beside the head.

Buttons, the keyboard and MQTT commands only put events on :attr:`Device.events`; the loop
applies them between frames, so a capture uses the next frame and the very next prediction
already uses the updated head::

    with Device(load_config("config.toml")) as device:
        device.run()            # until stop(), SIGTERM, or the replay ends
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from edge_classifier.backbone.model import Backbone
from edge_classifier.comms import events as ev
from edge_classifier.comms.bus import Bus
from edge_classifier.comms.fleet import FleetTransport
from edge_classifier.comms.mqtt import make_publisher
from edge_classifier.comms.web import Studio, WebTransport
from edge_classifier.config import Config, validate_config
from edge_classifier.core import blas
from edge_classifier.core.clock import SYSTEM_CLOCK
from edge_classifier.core.paths import default_state_dir
from edge_classifier.device.gpio import ButtonPanel, make_pin_factory
from edge_classifier.device.keyboard import KeyboardControl
from edge_classifier.device.sdnotify import Notifier, watchdog_interval
from edge_classifier.device.actions import DeviceActions
from edge_classifier.device.overlap import Overlap
from edge_classifier.errors import EndOfStream, NoFrameYet, StoreError
from edge_classifier.frames.sources import make_source
from edge_classifier.learning.augment import Augmentation
from edge_classifier.learning.learner import Learner
from edge_classifier.learning.smoothing import make_smoother
from edge_classifier.learning.state import StateDir

log = logging.getLogger("edge_classifier.device")
HEALTH_INTERVAL = 1.0  # seconds between checks that every transport is still alive
HEAD_SAVE_INTERVAL = 30.0  # seconds between saves of a changed head (samples are saved at once)
HEAD_FINAL_WAIT = 20.0  # seconds a stop waits for the head's background work before its save


@dataclass
class Counters:
    frames: int = 0
    captures: int = 0
    capture_errors: int = 0
    dropped_captures: int = 0
    dropped_samples: int = 0  # removed by the per-class limit
    events: int = 0
    event_errors: int = 0
    infer_ms: float = 0.0  # exponential average
    fps: float = 0.0
    started: float = 0.0
    last: Dict[str, float] = field(default_factory=dict)


class Device(DeviceActions):
    """The running classifier. Every part may be passed in (tests, the demo); the rest is built
    from ``config``. ``close()`` is safe twice; parts built here are closed on a failed start."""

    def __init__(self, config: Config, *, backbone=None, source=None, publisher=None,
                 pin_factory=None, clock=None, notifier=None, keyboard_stream=None,
                 default_paths: Optional[Sequence] = None, state_dir: Optional[Path] = None):
        self.config = config
        self.clock = clock or SYSTEM_CLOCK
        self.events: "queue.Queue[ev.Event]" = queue.Queue(maxsize=10000)
        self.counters = Counters(started=self.clock.now())
        self.state: Optional[str] = None  # nothing published yet
        self.last_prediction = None
        self._stop = threading.Event()
        self._pending: List[ev.Capture] = []
        self._dropped_in_request = 0  # samples the class limit dropped for the pending capture
        self._last_captured: Optional[str] = None
        self._frame: Optional[np.ndarray] = None
        self._shown: Optional[str] = None  # the state the panel's LEDs show
        # run() finishes each frame (head, smoother, outputs) on a worker while the next
        # frame's invoke runs (device/overlap.py); step() called alone finishes it at once.
        self.overlap = True
        self._after: Optional[Overlap] = None
        self._closers = []
        try:
            self._build(backbone, source, publisher, pin_factory, notifier, keyboard_stream,
                        default_paths, state_dir)
        except BaseException:
            self.close()
            raise

    # -- construction --------------------------------------------------------------------------
    def _build(self, backbone, source, publisher, pin_factory, notifier, keyboard_stream,
               default_paths, state_dir):
        cfg = self.config = validate_config(self.config)  # configs built in code too
        blas.set_threads(1)  # per-frame head maths must not steal the interpreter's cores
        root = Path(state_dir or cfg.state_dir or default_state_dir()).expanduser()
        self.state_dir = StateDir(root, command="edge-classifier run")
        self._closers.append(self.state_dir.close)
        crop = tuple(cfg.source.crop) or None  # the source cuts it out; the state checks it
        if backbone is None:
            backbone = Backbone.from_name(cfg.model.name or self.state_dir.model_name() or None,
                                          num_threads=cfg.model.threads or None,
                                          resize=cfg.model.resize, crop=crop)
        self.backbone = backbone = backbone.with_crop(crop)
        self.learner = Learner(
            backbone, self.state_dir, cfg.head.name or None,
            Augmentation(flip=cfg.head.flip, crops=cfg.head.crops),
            max_classes=cfg.head.max_classes,
            max_samples_per_class=cfg.head.max_samples_per_class,
            drop_policy=cfg.head.drop_policy)
        self.store = self.learner.store
        for c in cfg.classes:
            try:
                self.store.add_class(c.name)
            except StoreError as exc:
                self.learner.problems.append(f"class {c.name!r} of the config: {exc}")
        for problem in self.learner.problems:
            log.warning("%s", problem)
        self.smoother = make_smoother(cfg.smoothing)
        self.notifier = notifier or Notifier()
        self._closers.append(self.notifier.close)
        self.watchdog_every = watchdog_interval()
        self.publisher = publisher or make_publisher(cfg, self.post, clock=self.clock)
        self.bus = Bus([self.publisher])
        self._closers.append(self.bus.close)
        self.web, inbox = None, None
        if cfg.web.listen:  # the web studio: one more transport (edge_classifier.comms.web)
            inbox = self.state_dir.open_inbox(cfg.web.inbox_size)
            self.web = self.bus.add(WebTransport(cfg, self.post, store=self.store, inbox=inbox,
                                                 frame=lambda: self._frame, clock=self.clock))
        self.fleet = None
        if cfg.fleet.group:  # the fleet: one more transport and writer (comms/fleet)
            self.fleet = self.bus.add(FleetTransport(cfg, self.post, state=self.state_dir,
                                                     store=self.store, backbone=backbone))
            if self.web is not None:
                self.web.fleet_view = self.fleet.view  # GET /api/fleet
        self.studio = Studio(self.learner, inbox,
                             max_samples_per_class=cfg.head.max_samples_per_class,
                             changed=self._changed,
                             stored=lambda: self.bus.set_classes(self.store.classes),
                             stats=lambda: dict(self.stats(), links=self.bus.stats))
        self.bus.set_classes(self.store.classes)
        self.panel = None
        if any(c.button is not None or c.led is not None for c in cfg.classes) or \
                cfg.gpio.delete_button is not None or cfg.gpio.status_led is not None:
            factory = pin_factory or make_pin_factory(cfg.gpio.pin_factory)
            self.panel = ButtonPanel(cfg.classes, cfg.gpio, self.post, pin_factory=factory,
                                     clock=self.clock)
            self._closers.append(self.panel.close)
        self.keyboard = None
        if cfg.keyboard != "off":
            kb = KeyboardControl(lambda: self.store.classes, self.post, stream=keyboard_stream)
            if kb.active or cfg.keyboard == "on":
                self.keyboard = kb
                self._closers.append(kb.close)
            else:
                kb.close()
        if source is None and cfg.source.kind != "browser":
            source = make_source(cfg.source, default_paths=default_paths,
                                 size_hint=backbone.input_size, resize=backbone.resize,
                                 clock=self.clock)
        # With the studio, frames from a browser's camera take over while they come.
        self.source = self.web.browser_source(source) if self.web is not None else source
        self._closers.append(self.source.close)

    def post(self, event: ev.Event) -> None:
        """Queue an event for the loop (any thread). A full queue drops it, counted."""
        try:
            self.events.put_nowait(event)
        except queue.Full:
            self.counters.dropped_captures += 1

    def stop(self) -> None:
        """Ask the loop to finish after the current frame (any thread, signal handlers too)."""
        self._stop.set()

    # -- the loop ------------------------------------------------------------------------------
    def run(self, frames: Optional[int] = None, on_started=None) -> None:
        """Process frames until :meth:`stop`, a ``Stop`` event, ``frames`` frames, or the end of
        a non-looping replay. Camera failures propagate (the caller exits non-zero).
        ``on_started()`` runs once, after the first frame was processed."""
        self.bus.start()
        self.notifier.ready(status=f"classifying with {self.backbone.name}")
        last_ping = last_stats = last_save = last_health = self.clock.now()
        try:
            while not self._stop.is_set():
                self.apply_events()
                if self._stop.is_set():
                    break
                try:
                    frame = self.source.read()
                except EndOfStream:
                    break
                except NoFrameYet:  # a browser camera not streaming: events still apply
                    continue
                self.step(frame, overlap=self.overlap)
                if on_started is not None and self.counters.frames == 1:
                    self.settle()
                    on_started()
                now = self.clock.now()
                if self.watchdog_every is None or now - last_ping >= self.watchdog_every:
                    self.notifier.watchdog()  # tied to frame progress: a hung camera stops it
                    last_ping = now
                if now - last_health >= HEALTH_INTERVAL:
                    self.bus.raise_if_failed()  # a transport that gave up ends the run
                    last_health = now
                if now - last_stats >= self.config.mqtt.stats_interval:
                    self.settle()
                    self.bus.publish_stats(self.stats())
                    last_stats = now
                if self.learner.dirty and now - last_save >= HEAD_SAVE_INTERVAL:
                    self.settle()  # written in the background: the loop goes on meanwhile
                    if self.learner.save_in_background():
                        last_save = now  # (else a save or a refit is under way: next frame)
                if frames is not None and self.counters.frames >= frames:
                    break
            self.settle()  # the last frame's error, if any, ends the run like any other
        finally:
            self.shutdown()

    def step(self, frame: np.ndarray, overlap: bool = False) -> None:
        """One frame: pending capture, prediction, smoothing, publishing. With ``overlap``
        the second half — head, smoother, outputs — is handed to the frame worker and the
        call returns after the invoke, so the next frame's invoke runs beside it;
        :meth:`settle` waits for it (events, captures and the head's save do)."""
        c = self.counters
        c.frames += 1
        self._frame = frame
        if self.panel is not None:
            self.panel.tick()  # hold repeats, blinks ending, delete arming: on self.clock
            self._show_state()
        captured = None
        if self._pending:
            self.settle()  # the capture changes the head: the frame before must be done
            captured = self._capture(frame)
        t0 = self.clock.now()
        # A captured frame was just embedded (its first view): predict from that, not again.
        embedding = captured if captured is not None else \
            self.backbone.run_frame(frame).embedding
        if overlap:
            if self._after is None:
                self._after = Overlap(self._finish_frame)
            self._after.submit(c.frames, embedding, t0)
            return
        self.settle()
        self._finish_frame(c.frames, embedding, t0)
        if self.panel is not None:
            self._show_state()

    def settle(self) -> None:
        """Wait for the frame the worker is finishing (see :meth:`step`); then nothing but
        this thread touches the head, the smoother or the outputs. Raises that frame's
        error, if it had one."""
        if self._after is not None:
            self._after.settle()

    def _finish_frame(self, number: int, embedding: np.ndarray, t0: float) -> None:
        c = self.counters
        prediction = self.learner.predict_embedding(embedding)
        self.last_prediction = prediction
        dt = self.clock.now() - t0
        c.infer_ms = dt * 1000 if number == 1 else 0.9 * c.infer_ms + 100 * dt
        previous = c.last.get("frame_time")
        now = self.clock.now()
        if previous is not None and now > previous:
            c.fps = 1 / (now - previous) if c.fps == 0 else 0.9 * c.fps + 0.1 / (now - previous)
        c.last["frame_time"] = now
        state = self.smoother.update(prediction.label, prediction.confidence, prediction.scores)
        if state != self.state:
            self.state = state
            self.bus.publish_state(state)
        self.bus.publish_prediction(dict(
            prediction.as_dict(), state=state, timestamp=round(self.clock.wall(), 3),
            frame=number, model=self.backbone.name, head=self.learner.head_name))

    def _show_state(self) -> None:
        """The panel's LEDs follow the published state, on the loop thread (gpiozero's
        devices and the panel's blinks are not shared with the frame worker)."""
        state = self.state
        if state != self._shown:
            self._shown = state
            self.panel.show_prediction(state)

    def stats(self) -> dict:
        c, p = self.counters, self.bus.stats
        return {"frames": c.frames, "fps": round(c.fps, 2), "inference_ms": round(c.infer_ms, 2),
                "samples": self.store.counts(), "uptime": round(self.clock.now() - c.started, 1),
                "reconnects": p.get("reconnects", 0), "dropped": p.get("dropped", 0),
                "published": p.get("published", 0), "captures": c.captures,
                "capture_errors": c.capture_errors, "dropped_captures": c.dropped_captures,
                "event_errors": c.event_errors, "dropped_samples": c.dropped_samples,
                "callback_errors": p.get("callback_errors", 0) + self._panel_errors(),
                "inbox": p.get("inbox", 0), "state": self.state}

    def _panel_errors(self) -> int:
        errors = getattr(self.panel, "callback_errors", 0) if self.panel else 0
        return errors + (getattr(self.keyboard, "callback_errors", 0) if self.keyboard else 0)

    # -- shutdown ------------------------------------------------------------------------------
    def _save_head(self) -> None:
        try:
            self.learner.save()
        except StoreError as exc:
            log.error("head not saved: %s", exc)

    def shutdown(self) -> None:
        """Flush state, publish ``offline``, tell systemd we are stopping. Safe twice."""
        if getattr(self, "_shut", False):
            return
        self._shut = True
        try:
            self.settle()
        except Exception:  # noqa: BLE001 - on the way out: the state is still saved
            log.exception("the last frame failed")
        if self._after is not None:
            self._after.close()
        self.notifier.stopping()
        # a recalibration under way is finished first, so the head is saved calibrated (a
        # read-only predict on the state uses the saved calibration as it is)
        self.learner.wait_background(timeout=HEAD_FINAL_WAIT)
        self.learner.wait_saved()  # a periodic save under way (failed: dirty, written again)
        if self.learner.dirty:
            self._save_head()
        self.bus.stop()  # never raises: a transport's failure is logged

    def close(self) -> None:
        if self._after is not None:
            self._after.close()
        learner = getattr(self, "learner", None)
        if learner is not None:
            learner.wait_saved()  # before the state's lock goes: a save may be under way
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # noqa: BLE001
                log.exception("closing %r failed", closer)
        self._closers = []

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
