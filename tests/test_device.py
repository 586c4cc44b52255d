"""The device loop end to end with real parts: the real model, replayed photos, gpiozero's
MockFactory, a real mosquitto, a real sd_notify socket, a real pseudo-terminal. Where time
matters the device runs on a FakeClock that the test (or the replay's pacing) advances."""

from __future__ import annotations

import json
import os
import pty
import socket

import pytest
from devicekit import BIRD_PIN, CAT_PIN, Running, make_config, press
from mosquitto import BASE, Mosquitto, Observer, free_port, running_broker
from waiting import TIMEOUT, wait_until

from edge_classifier.comms.events import Capture
from edge_classifier.core.clock import FakeClock
from edge_classifier.device.loop import HEAD_SAVE_INTERVAL
from edge_classifier.device.sdnotify import Notifier
from edge_classifier.frames.sources import ReplaySource
from edge_classifier.learning.state import HEAD_META

broker = pytest.fixture(running_broker, name="broker")


def test_button_presses_add_samples_that_survive_a_restart(device_factory, tmp_path):
    device = device_factory(make_config())
    running = Running(device)
    running.wait_frames(1)
    press(device, BIRD_PIN)
    assert wait_until(lambda: device.store.counts()["bird"] == 1)
    press(device, CAT_PIN)
    assert wait_until(lambda: device.store.counts()["cat"] == 1)
    running.finish()
    device.close()
    again = device_factory(make_config())
    assert again.store.counts() == {"bird": 1, "cat": 1}
    assert again.learner.head is not None and list(again.learner.head.classes) == ["bird", "cat"]


def test_a_capture_is_used_by_the_very_next_prediction(device_factory):
    device = device_factory(make_config(), photos=("cat.bmp",))
    device.step(device.source.read())
    assert device.last_prediction.label == "unknown"  # nothing learned yet
    device.post(Capture(class_name="cat", origin="test"))
    device.apply_events()
    device.step(device.source.read())  # captures this frame, then predicts it
    assert device.store.counts()["cat"] == 1
    assert device.last_prediction.best == "cat"


def test_predictions_state_and_availability_reach_a_subscriber(broker, device_factory):
    config = make_config(broker)
    with Observer(broker, f"{BASE}/#") as seen:
        device = device_factory(config)
        device.learner.capture("bird", device.source.read())
        device.learner.capture("cat", device.source.read())
        running = Running(device)
        seen.wait_for(f"{BASE}/availability", "online")
        message = seen.wait_for(f"{BASE}/prediction")
        payload = json.loads(message.payload)
        assert set(payload) >= {"label", "confidence", "scores", "unknown", "timestamp", "frame",
                                "model", "head"}
        assert set(payload["scores"]) == {"bird", "cat"}
        assert payload["model"] == device.backbone.name
        state = seen.wait_for(f"{BASE}/state")
        assert state.payload.decode() in ("bird", "cat", "unknown")
        stats = json.loads(seen.wait_for(f"{BASE}/stats").payload)
        assert stats["samples"] == {"bird": 1, "cat": 1} and stats["frames"] >= 1
        running.finish()
        seen.wait_for(f"{BASE}/availability", "offline")


def test_broker_started_late_and_restarted_never_stops_inference(tmp_path, device_factory):
    server = Mosquitto(tmp_path / "broker", port=free_port())
    device = device_factory(make_config(server))
    running = Running(device)
    running.wait_frames(3)  # no broker yet: frames go on
    assert not device.publisher.stats["connected"]
    server.start()
    try:
        with Observer(server, f"{BASE}/availability") as seen:
            seen.wait_for(f"{BASE}/availability", "online")
            mark = seen.mark()
            server.restart()
            running.wait_frames(3)
            seen.wait_for(f"{BASE}/availability", "online", after=mark)
        assert wait_until(lambda: device.publisher.stats["reconnects"] >= 1)
        running.wait_frames(3)
        running.finish()
    finally:
        server.stop()


def command(seen, action, payload):
    mark = seen.mark()
    seen.publish(f"{BASE}/cmd/{action}", json.dumps(payload))
    return json.loads(seen.wait_for(f"{BASE}/cmd/result", after=mark).payload)


def test_remote_commands(broker, device_factory):
    device = device_factory(make_config(broker, commands=True))
    running = Running(device)
    with Observer(broker, f"{BASE}/cmd/result", f"{BASE}/snapshot") as seen:
        assert wait_until(lambda: device.publisher.stats["connected"])
        r = command(seen, "capture", {"class": "cat", "count": 2, "id": "c1"})
        assert r["ok"] and r["id"] == "c1" and r["samples"] == 2
        assert device.store.counts()["cat"] == 2
        r = command(seen, "capture", {"class": "dog", "id": "new"})
        assert r["ok"] and device.store.counts()["dog"] == 1  # capture creates a class
        r = command(seen, "delete_last", {"class": "cat"})
        assert r["ok"] and device.store.counts()["cat"] == 1
        r = command(seen, "rename_class", {"class": "dog", "to": "puppy"})
        assert r["ok"] and "puppy" in device.store.classes
        r = command(seen, "clear_class", {"class": "puppy"})
        assert r["ok"] and r["deleted"] == 1
        r = command(seen, "delete_class", {"class": "puppy"})
        assert r["ok"] and "puppy" not in device.store.classes
        r = command(seen, "snapshot", {"id": "s"})
        assert r["ok"] and seen.wait_for(f"{BASE}/snapshot").payload[:2] == b"\xff\xd8"
        # refused: unknown class, a class bound to a button, malformed and path-like input
        assert not command(seen, "delete_last", {"class": "nope"})["ok"]
        assert "bound to a button" in command(seen, "rename_class",
                                              {"class": "cat", "to": "kitty"})["error"]
        assert not command(seen, "capture", {"class": "../etc"})["ok"]
        assert not command(seen, "capture", {"class": "cat", "count": "many"})["ok"]
        mark = seen.mark()
        seen.publish(f"{BASE}/cmd/capture", b"{not json")
        assert not json.loads(seen.wait_for(f"{BASE}/cmd/result", after=mark).payload)["ok"]
        mark = seen.mark()
        seen.publish(f"{BASE}/cmd/format_disk", b"{}")
        assert "format_disk" in json.loads(seen.wait_for(f"{BASE}/cmd/result", after=mark).payload)["error"]
    assert device.store.counts() == {"bird": 0, "cat": 1}  # nothing lost by the bad ones
    running.wait_frames(2)
    running.finish()


def test_sd_notify_ready_watchdog_and_stopping(device_factory, tmp_path, monkeypatch, sample):
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # WatchdogSec=2: a ping every second
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    clock = FakeClock()
    source = ReplaySource([sample("bird.bmp")], fps=1.0, clock=clock)  # a frame per second
    device = device_factory(make_config(), source=source, clock=clock,
                            notifier=Notifier(address=path))
    device.run(frames=5)  # frames at 0, 1, 2, 3 and 4 s
    receiver.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(receiver.recv(4096).decode())
        except BlockingIOError:
            break
    receiver.close()
    assert "READY=1" in messages[0]
    assert messages[1:-1] == ["WATCHDOG=1"] * 4  # one per interval of frame progress
    assert "STOPPING=1" in messages[-1]


class WatchedReplay(ReplaySource):
    """A replay that calls ``watch(frame_index)`` before each frame is read."""

    def __init__(self, paths, watch, **kwargs):
        super().__init__(paths, **kwargs)
        self.watch = watch

    def _read(self):
        self.watch(self.frames_read)
        return super()._read()


def test_a_changed_head_is_saved_every_head_save_interval(device_factory, tmp_path, sample):
    clock = FakeClock()
    head = tmp_path / "state" / HEAD_META
    period = int(HEAD_SAVE_INTERVAL)  # in frames: the replay runs at 1 fps on the fake clock
    later = 2 * period + 10  # the frame at which the head is changed again, after a quiet spell
    seen = []  # per frame, as it is read: (inode of the saved head or None, dirty?)

    def watch(i):
        device.learner.wait_saved()  # the periodic save is written in the background
        seen.append((head.stat().st_ino if head.exists() else None, device.learner.dirty))
        if i == later:
            device.post(Capture(class_name="cat", origin="test"))

    source = WatchedReplay([sample("cat.bmp")], watch, fps=1.0, clock=clock)
    device = device_factory(make_config(), source=source, clock=clock)
    device.post(Capture(class_name="cat", origin="test"))  # captured with frame 0, at 0 s
    device.run(frames=later + 10)  # frame i is read at i s
    saved_before = [i for i in range(1, len(seen)) if seen[i][0] != seen[i - 1][0]]
    # saved after the frame at 30 s; not at 60 s (nothing had changed); after the frame that
    # captured at 71 s at once (30 s had passed since the last save); never at other frames
    assert saved_before == [period + 1, later + 2]
    dirty = [d for _, d in seen[1:later + 2]]
    assert dirty == [True] * period + [False] * (later - period + 1)
    assert not device.learner.dirty


def _held_saves(device, monkeypatch):
    """Make the device's head saves wait for ``release`` (set) once they have ``begun``."""
    import threading
    begun, release, real = threading.Event(), threading.Event(), device.state_dir.save_head

    def held(*args):
        begun.set()
        assert release.wait(TIMEOUT), "the held save was never released"
        real(*args)
    monkeypatch.setattr(device.state_dir, "save_head", held)
    return begun, release


def test_the_loop_goes_on_while_its_periodic_save_is_written(device_factory, tmp_path, sample,
                                                             monkeypatch):
    """The periodic save is written in a thread of its own (at 10,000 samples the write and its
    fsync take 50 ms and more here, seconds on an SD card): frames go on meanwhile, a capture
    among them, and what is written is the head as it was when the save began."""
    from edge_classifier.learning.heads import load_head
    clock = FakeClock()
    period = int(HEAD_SAVE_INTERVAL)
    log = []  # per frame: (frame, save under way?)

    def watch(i):
        if i == period + 2:
            assert begun.wait(TIMEOUT)  # the save began after frame period (at 30 s) ...
            device.post(Capture(class_name="bird", origin="test"))  # ... and we teach meanwhile
        if i == period + 6:
            release.set()
        saver = device.learner._saver
        log.append((i, saver is not None and not saver.done.is_set()))

    source = WatchedReplay([sample("cat.bmp")], watch, fps=1.0, clock=clock)
    device = device_factory(make_config(), source=source, clock=clock)
    begun, release = _held_saves(device, monkeypatch)
    device.post(Capture(class_name="cat", origin="test"))
    device.run(frames=period + 8)
    # the save began after the frame at 30 s; the next five frames were read (a capture taken
    # among them) while it was held
    busy = dict(log)
    assert not busy[period] and all(busy[i] for i in range(period + 1, period + 6))
    assert device.store.counts() == {"bird": 1, "cat": 1}
    arrays, meta = device.state_dir.load_head_files()
    saved = load_head(arrays, meta["head_meta"])
    assert saved.classes == ["bird", "cat"] and saved.n_samples == 2  # the final save's head
    assert not device.learner.dirty


@pytest.mark.parametrize("taught_meanwhile", [True, False])
def test_a_stop_waits_for_the_save_under_way_then_saves_what_changed_since(
        device_factory, tmp_path, sample, monkeypatch, taught_meanwhile):
    from edge_classifier.learning.heads import load_head
    clock = FakeClock()
    period = int(HEAD_SAVE_INTERVAL)
    order = []

    def watch(i):
        if i == period + 2:
            assert begun.wait(TIMEOUT)
            if taught_meanwhile:
                device.post(Capture(class_name="bird", origin="test"))  # after the save began

    source = WatchedReplay([sample("cat.bmp")], watch, fps=1.0, clock=clock)
    device = device_factory(make_config(), source=source, clock=clock)
    begun, release = _held_saves(device, monkeypatch)
    real_wait = device.learner.wait_saved

    def wait_saved():  # the stop: releases the held save, and must wait for it
        order.append("wait")
        release.set()
        real_wait()
    monkeypatch.setattr(device.learner, "wait_saved", wait_saved)
    device.post(Capture(class_name="cat", origin="test"))
    device.run(frames=period + 4)  # ends while the save is still held
    assert order and device.learner._saver is None and not device.learner.dirty
    arrays, meta = device.state_dir.load_head_files()
    assert load_head(arrays, meta["head_meta"]).n_samples == (2 if taught_meanwhile else 1)


def test_a_periodic_save_that_fails_is_logged_and_tried_again(device_factory, tmp_path, sample,
                                                              monkeypatch, caplog):
    import logging
    from edge_classifier.errors import StoreError
    clock = FakeClock()
    period = int(HEAD_SAVE_INTERVAL)
    real, calls, seen = None, [], []  # seen: saves tried before each frame was read

    def failing_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise StoreError(f"{tmp_path}/state: cannot write the head: No space left on device")
        real(*args)

    def watch(i):
        device.learner.wait_saved()  # (deterministic: each save is over before the next frame)
        seen.append(len(calls))

    source = WatchedReplay([sample("cat.bmp")], watch, fps=1.0, clock=clock)
    device = device_factory(make_config(), source=source, clock=clock)
    real = device.state_dir.save_head
    monkeypatch.setattr(device.state_dir, "save_head", failing_once)
    device.post(Capture(class_name="cat", origin="test"))
    with caplog.at_level(logging.ERROR):
        device.run(frames=2 * period + 5)
    errors = [r for r in caplog.records if "head not saved" in r.getMessage()]
    assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()
    assert errors[0].exc_info is None  # one line, no traceback
    tried = [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]
    assert tried == [period + 1, 2 * period + 1]  # after the frame at 30 s (failed), at 60 s
    assert (tmp_path / "state" / HEAD_META).exists() and not device.learner.dirty


def test_a_held_button_keeps_one_capture_pending(device_factory):
    """While a long capture occupies the frames, a held button's repeats do not pile up: one
    capture of its class waits, the others are dropped (counted)."""
    clock = FakeClock()
    device = device_factory(make_config(), clock=clock)  # hold_rate 50/s
    device.post(Capture(class_name="cat", count=4, origin="test"))  # takes the next 4 frames
    pin = device.panel.pin_factory.pin(BIRD_PIN)
    pin.drive_low()  # the press: one bird capture queued
    for _ in range(4):  # held for 4 frames, 0.1 s apart: a repeat is due at every tick
        device.apply_events()
        device.step(device.source.read())
        clock.advance(0.1)
    pin.drive_high()
    assert device.store.counts() == {"bird": 0, "cat": 4}
    for _ in range(4):
        device.apply_events()
        device.step(device.source.read())
        clock.advance(0.1)
    assert device.store.counts() == {"bird": 1, "cat": 4}  # one capture for the whole hold
    assert device.counters.dropped_captures == 3  # the three repeats behind it


def test_q_on_the_keyboard_stops_the_loop(device_factory, capsys):
    master, slave = pty.openpty()
    with os.fdopen(slave, "rb", buffering=0) as terminal:
        device = device_factory(make_config().replace(keyboard="on"), keyboard_stream=terminal)
        assert device.keyboard is not None and device.keyboard.active
        running = Running(device)  # an endless replay: only the Stop event ends it
        running.wait_frames(2)
        os.write(master, b"q")
        running.thread.join(TIMEOUT)
        assert not running.thread.is_alive() and running.error is None
        device.close()
        os.close(master)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1] == {"topic": f"{BASE}/availability", "payload": "offline",
                         "retained": True}  # a clean shutdown


def test_stdout_publishing_without_a_broker(device_factory, capsys):
    device = device_factory(make_config())
    device.run(frames=3)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    topics = {line["topic"] for line in lines}
    assert f"{BASE}/prediction" in topics and f"{BASE}/availability" in topics


def test_a_stop_saves_the_head_calibrated_after_captures(device_factory, tmp_path, monkeypatch):
    """Captures leave the head's calibration to a background job: a stop finishes it before the
    save, so the saved head (which a read-only predict uses as it is) has a real unknown
    threshold, not the placeholder of a head never calibrated."""
    import threading
    from edge_classifier.learning import learner as learner_module
    gate = threading.Event()  # the background work waits for the stop (no race with it)
    real = learner_module._Background

    class Gated(real):
        def __init__(self, kind, work):
            super().__init__(kind, lambda: (gate.wait(), work())[1])
    monkeypatch.setattr(learner_module, "_Background", Gated)
    wait = learner_module.Learner.wait_background
    monkeypatch.setattr(learner_module.Learner, "wait_background",
                        lambda self, timeout=None: (gate.set(), wait(self, timeout))[1])
    device = device_factory(make_config(), photos=("cat.bmp", "parrot.jpg"))
    for name in ("cat", "bird", "cat", "bird"):
        device.post(Capture(class_name=name, origin="test"))
        device.apply_events()
        device.step(device.source.read())
    assert device.store.counts() == {"cat": 2, "bird": 2}
    assert device.learner.head.calibration_stale and not gate.is_set()
    device.shutdown()
    meta = json.loads((tmp_path / "state" / HEAD_META).read_text())["head_meta"]
    assert meta["calibration_stale"] is False
    assert meta["open"]["threshold"] < float("inf")
    device.close()
