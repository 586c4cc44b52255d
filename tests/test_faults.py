"""Fault injection against the real parts: kill -9, corrupt files, a full or read-only disk, a
hung camera, SIGTERM, a held button, callbacks that raise, the service's hardening.

Nothing here sleeps or asserts a duration: the device runs on a FakeClock where time matters,
kills land after a random number of the worker's output lines, and every wait is for an event
with a timeout that only bounds a failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from devicekit import Running, make_config, press
from fsfaults import needs_root, read_only
from mosquitto import BASE, LogRecorder, Observer, running_broker
from waiting import TIMEOUT, wait_until

from edge_classifier import cli
from edge_classifier.core.clock import FakeClock
from edge_classifier.config import HeadConfig
from edge_classifier.errors import EndOfStream
from edge_classifier.comms.events import Capture
from edge_classifier.frames.images import load_image
from edge_classifier.learning.learner import Learner
from edge_classifier.learning.state import HEAD_ARRAYS, StateDir
from edge_classifier.learning.limits import redundant_order
from edge_classifier.device.sdnotify import Notifier
from edge_classifier.frames.sources import FrameSource
from edge_classifier.learning.store import SampleStore

broker = pytest.fixture(running_broker, name="broker")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def received(sock) -> list:
    """Every datagram already waiting on ``sock``, without waiting for more."""
    sock.setblocking(False)
    messages = []
    with contextlib.suppress(BlockingIOError):
        while True:
            messages.append(sock.recv(4096).decode())
    return messages


# -- 1. kill -9 while capturing and saving ---------------------------------------------------
def test_kill_9_at_random_moments_loses_nothing_acknowledged(tmp_path, backbones, sample):
    """50 rounds of SIGKILL at random moments: the device's worker, and every fifth round
    `train` in the middle of an import (it resumes with no duplicate)."""
    backbone = backbones()
    base = np.stack([backbone.embed(load_image(sample(p)))
                     for p in ("cat.bmp", "owl.jpg", "hot_dog.jpg")])
    embeddings = tmp_path / "base.npy"
    np.save(embeddings, np.stack([base, base[:, ::-1]], axis=1))
    state = tmp_path / "state"
    rng = np.random.default_rng(1)
    acked, deleted, deleting = set(), set(), set()
    env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    photos = import_folder(tmp_path / "photos", sample)
    train_kills = 0
    for round_ in range(50):
        if round_ % 5 == 4:  # every fifth round kills `train` in the middle of its import
            train_kills += kill_train_mid_import(photos, state, env, int(rng.integers(1, 11)))
            check_imported(state, photos, backbone)
            continue
        proc = subprocess.Popen([sys.executable, str(HERE / "crash_worker.py"), str(state),
                                 str(embeddings), str(round_)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        lines = []
        assert proc.stdout.readline().strip() == "READY"
        # kill after a random number of lines: the worker is busy with the next operation by
        # then, at whatever point of it the scheduler has reached (no timer involved)
        kill_after = int(rng.integers(0, 30))
        while len(lines) < kill_after:
            line = proc.stdout.readline()
            if not line:
                break  # the worker died by itself: the checks below say what it left
            lines.append(line.split())
        proc.kill()
        lines += [line.split() for line in proc.stdout]  # printed before it died
        proc.wait(TIMEOUT)
        for word, *rest in lines:
            if word == "ACK":
                acked.add(tuple(rest))
            elif word == "DELETING":
                deleting.add(tuple(rest))
            elif word == "DEL":
                deleted.add(tuple(rest))
        store = SampleStore(state, backbone=backbone.identity)
        present = {(c, sid) for c in store.classes for sid in store.sample_ids(c)}
        must_have = acked - deleting
        assert must_have <= present, f"round {round_}: lost {sorted(must_have - present)[:3]}"
        assert not (deleted & present)
        # no truncated or half-written sample; a kill between a new class folder's rename
        # into place and the class list's write leaves the folder unlisted: it is adopted
        assert [p for p in store.problems if not p.endswith("was not in the class list; adopted")] == []
        assert not list(state.rglob(".tmp-*"))  # stray temporaries cleaned up
        with StateDir(state) as owner:
            learner = Learner(backbone, owner)
        assert learner.head is not None and learner.head.n_samples == len(store)
    assert len(acked) > 100  # the kills really happened mid-work
    assert train_kills >= 8  # and train was killed mid-import (90 files, <= 10 lines a round)
    assert cli.main(["train", str(photos), "--state", str(state), "-q"]) == 0
    counts = SampleStore(state, backbone=backbone.identity).counts()
    assert {c: counts[c] for c in ("pcat", "powl", "pfood")} == {"pcat": 30, "powl": 30,
                                                                "pfood": 30}


def import_folder(root, sample):
    """90 distinct small photos in three class folders (crops of the sample photos)."""
    for cls, photo in (("pcat", "cat.bmp"), ("powl", "owl.jpg"), ("pfood", "hot_dog.jpg")):
        image = load_image(sample(photo))
        (root / cls).mkdir(parents=True)
        h, w = image.shape[:2]
        for i in range(30):
            crop = image[i * h // 120: h - i * h // 120, i * w // 90: w - i * w // 180]
            Image.fromarray(crop).resize((160, 120)).save(root / cls / f"{i}.jpg")
    return root


def kill_train_mid_import(photos, state, env, after_lines) -> bool:
    """Start `train` and SIGKILL it once the import journal grew by ``after_lines`` lines;
    True if it was killed before it finished."""
    journal = state / "imports.jsonl"

    def lines() -> int:
        try:
            return journal.read_bytes().count(b"\n")
        except OSError:
            return 0
    start = lines()
    proc = subprocess.Popen([sys.executable, "-m", "edge_classifier", "train", str(photos),
                             "--state", str(state), "-q", "--threads", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = wait_until(lambda: proc.poll() is not None or lines() - start >= after_lines,
                        TIMEOUT * 4) and proc.poll() is None
    proc.kill()
    proc.wait(TIMEOUT)
    return killed


def check_imported(state, photos, backbone):
    """After a kill: no file stored twice, nothing half-written."""
    store = SampleStore(state, backbone=backbone.identity)
    # A kill between making a class's folder and listing it: the folder is adopted, as above.
    assert [p for p in store.problems if not p.endswith("was not in the class list; adopted")] \
        == []
    for cls in ("pcat", "powl", "pfood"):
        if cls in store.classes:
            assert len(store.sample_ids(cls)) <= 30
    imported = StateDir(state, write=False).read_imports()
    ids = [v["id"] for v in imported.values()]
    assert len(ids) == len(set(ids))


# -- 2. corrupt files: the device starts and says what it discarded --------------------------
def test_device_starts_with_corrupt_head_sample_and_class_list(device_factory, tmp_path,
                                                               caplog):
    device = device_factory(make_config())
    frame = device.source.read()
    keep = [device.learner.capture("bird", frame).sample_id for _ in range(3)]
    device.learner.save()
    device.close()
    state = tmp_path / "state"
    (state / HEAD_ARRAYS).write_bytes(b"garbage")
    victim = next(state.glob(f"samples/*/{keep[1]}.npy"))
    victim.write_bytes(victim.read_bytes()[:50])
    (state / "store.json").write_text('{"classes": [')
    with caplog.at_level(logging.WARNING, logger="edge_classifier"):
        again = device_factory(make_config())
    text = caplog.text
    assert "store.json: unreadable" in text and f"{keep[1]}.npy: unreadable sample skipped" in text
    assert "head file is corrupt" in text and "rebuilding the head" in text
    assert again.store.sample_ids("bird") == [keep[0], keep[2]]
    again.run(frames=2)
    assert again.last_prediction.best == "bird"


def test_corrupt_config_falls_back_to_the_last_good_one(tmp_path, capsys, caplog, models_dir,
                                                       sample):
    config = tmp_path / "c.toml"
    config.write_text('device_id = "shed"\nkeyboard = "off"\n')
    argv = ["run", "--config", str(config), "--state", str(tmp_path / "s"), "--source",
            f"replay:{sample('cat.bmp')}", "--frames", "2"]
    assert cli.main(argv) == 0
    config.write_text('device_id = "shed"\nkeyboard = "of')  # truncated by a power cut
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "not valid TOML" in caplog.text and "using the last config that worked" in caplog.text
    assert '"topic": "edge_classifier/shed/availability"' in out


# -- 3. disk full, or read-only -------------------------------------------------------------
@needs_root
def test_full_disk_refuses_captures_and_inference_goes_on(broker, device_factory, tmp_path):
    point = tmp_path / "small"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(point)], check=True)
    try:
        device = device_factory(make_config(broker, commands=True), state=point / "state")
        running = Running(device)
        acked = []
        with Observer(broker, f"{BASE}/cmd/result") as seen:
            assert wait_until(lambda: device.publisher.stats["connected"])
            for i in range(200):
                mark = seen.mark()
                seen.publish(f"{BASE}/cmd/capture", json.dumps({"class": "cat", "id": str(i)}))
                result = json.loads(seen.wait_for(f"{BASE}/cmd/result", after=mark).payload)
                if not result["ok"]:
                    break
                acked.append(result["sample"])
        assert "disk full" in result["error"] and acked
        running.wait_frames(3)  # inference goes on
        running.finish()
        device.close()
        again = SampleStore(point / "state", backbone=device.backbone.identity)
        assert again.sample_ids("cat") == acked and again.problems == []
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_read_only_state_refuses_captures_and_inference_goes_on(device_factory, tmp_path,
                                                               caplog):
    device = device_factory(make_config(), photos=("cat.bmp",))
    device.post(Capture(class_name="cat", origin="test"))
    device.apply_events()
    device.step(device.source.read())
    kept = device.store.sample_ids("cat")
    with read_only(tmp_path / "state"), caplog.at_level(logging.ERROR, "edge_classifier"):
        device.post(Capture(class_name="cat", origin="test"))
        device.apply_events()
        frames = device.counters.frames
        device.step(device.source.read())
        device.step(device.source.read())
    assert device.counters.capture_errors == 1
    assert "cannot write the state directory" in caplog.text
    assert device.counters.frames == frames + 2 and device.last_prediction.best == "cat"
    assert device.store.sample_ids("cat") == kept  # nothing lost, nothing half-written
    assert not list((tmp_path / "state").rglob(".tmp-*"))
    device.post(Capture(class_name="cat", origin="test"))  # writable again: captures work
    device.apply_events()
    device.step(device.source.read())
    assert len(device.store.sample_ids("cat")) == len(kept) + 1


# -- 6. a hung camera stops the watchdog; a missing camera is fatal --------------------------
class HangingSource(FrameSource):
    """Delivers ``good`` frames ``step`` seconds of ``clock`` time apart, then blocks as a
    wedged camera driver would (:attr:`hung` is set) until :attr:`release` is set."""

    def __init__(self, frame, good, clock, step):
        super().__init__()
        self.frame, self.good, self.fake_clock, self.step = frame, good, clock, step
        self.hung, self.release = threading.Event(), threading.Event()

    def _read(self):
        if self.frames_read >= self.good:
            self.hung.set()
            self.release.wait(TIMEOUT)
            raise EndOfStream("released")
        self.fake_clock.advance(self.step)
        return self.frame.copy()


def test_hung_camera_stops_the_watchdog_pings(device_factory, tmp_path, monkeypatch, sample):
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # WatchdogSec=2: a ping every second
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    clock = FakeClock()
    source = HangingSource(load_image(sample("cat.bmp")), good=5, clock=clock, step=1.0)
    device = device_factory(make_config(), source=source, notifier=Notifier(address=path),
                            clock=clock)
    running = Running(device)
    assert source.hung.wait(TIMEOUT)  # five frames done, the sixth read is stuck
    before = received(receiver)
    assert "READY=1" in before[0]
    assert before[1:] == ["WATCHDOG=1"] * 5  # one ping per frame, each one interval later
    clock.advance(60.0)  # a minute of hang: thirty ping intervals
    assert received(receiver) == []  # no frame, no ping: systemd would restart us
    source.release.set()
    running.finish()
    assert "STOPPING=1" in received(receiver)[-1]
    receiver.close()


def test_camera_that_cannot_be_opened_is_fatal(tmp_path, capsys, models_dir):
    code = cli.main(["run", "--source", "picamera2", "--state", str(tmp_path / "s"),
                     "--frames", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "picamera2" in err or "camera" in err


# -- 7. SIGTERM and kill -9 of the real command ------------------------------------------------
def start_device_process(broker, tmp_path, sample, notify=None):
    config = tmp_path / "c.toml"
    config.write_text(f'device_id = "dev1"\nkeyboard = "off"\n[mqtt]\nbroker = "{broker.url}"\n'
                      'keepalive = 5\nreconnect_min = 0.1\nreconnect_max = 0.5\n[source]\n'
                      'fps = 20.0\n')
    env = dict(os.environ)
    if notify:
        env["NOTIFY_SOCKET"] = notify
    return subprocess.Popen(
        [sys.executable, "-m", "edge_classifier", "run", "--config", str(config), "--state",
         str(tmp_path / "s"), "--source", f"replay:{sample('cat.bmp')}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def test_sigterm_publishes_offline_sends_stopping_and_exits_0(broker, tmp_path, sample,
                                                              models_dir):
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(TIMEOUT * 2)
    with Observer(broker, f"{BASE}/availability") as seen:
        proc = start_device_process(broker, tmp_path, sample, notify=path)
        try:
            assert "READY=1" in receiver.recv(4096).decode()
            seen.wait_for(f"{BASE}/availability", "online")
            mark = seen.mark()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(TIMEOUT) == 0
            seen.wait_for(f"{BASE}/availability", "offline", after=mark)
        finally:
            proc.kill()
    rest = received(receiver)  # the process has exited: everything it sent is here
    assert any("STOPPING=1" in m for m in rest)
    assert (tmp_path / "s" / "store.json").is_file()


def test_kill_9_gets_the_last_will_published(broker, tmp_path, sample, models_dir):
    with Observer(broker, f"{BASE}/availability") as seen:
        proc = start_device_process(broker, tmp_path, sample)
        try:
            seen.wait_for(f"{BASE}/availability", "online", timeout=TIMEOUT * 2)
            mark = seen.mark()
            proc.kill()
            proc.wait(TIMEOUT)
            # keepalive 5 s: the broker gives up after 1.5 x keepalive (11-12 s seen with its
            # coarse keep-alive buckets) and sends the will; 20 s is only the bound for failing
            seen.wait_for(f"{BASE}/availability", "offline", after=mark, timeout=20)
        finally:
            proc.kill()


# -- 10. a button held for minutes, or bouncing ---------------------------------------------
def test_held_button_is_rate_limited_and_the_store_bounded(device_factory):
    clock = FakeClock()
    config = make_config()
    config = config.replace(head=HeadConfig(max_samples_per_class=10),
                            gpio=config.gpio.__class__(pin_factory="mock", hold_rate=5.0))
    device = device_factory(config, photos=("cat.bmp", "owl.jpg"), clock=clock)
    sizes = []
    for _ in range(200):  # 200 frames at 20 fps = 10 s with a capture event every frame
        device.post(Capture(class_name="cat", origin="button"))
        device.apply_events()
        device.step(device.source.read())
        clock.advance(0.05)
        sizes.append(device.store.counts()["cat"])
    assert device.counters.captures <= 5 * 10 + 1  # hold_rate per second, never more
    assert device.counters.captures >= 5 * 10 - 5
    assert max(sizes) <= 10  # bounded by max_samples_per_class
    assert device.counters.dropped_captures > 0


def test_redundant_policy_drops_near_duplicates_first():
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(5, 16))
    frames = np.vstack([distinct, distinct[2] + 1e-3])  # the last is a copy of the third
    assert set(redundant_order(frames, 1)) <= {2, 5}


# -- 5. exceptions inside callbacks ----------------------------------------------------------
def test_a_raising_button_callback_is_counted_and_the_next_press_works(device_factory):
    device = device_factory(make_config())
    calls = {"n": 0}
    post = device.post

    def flaky(event):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("queue exploded")
        post(event)
    device.panel._on_event = flaky
    press(device, 17)  # MockFactory runs the callbacks in this thread, before press returns
    press(device, 17)
    assert device.panel.callback_errors == 1
    device.apply_events()
    device.step(device.source.read())
    assert device.store.counts()["bird"] == 1
    assert device.stats()["callback_errors"] >= 1


def test_an_unexpected_exception_in_an_event_answers_internal_error_and_the_loop_goes_on(
        broker, device_factory, monkeypatch):
    device = device_factory(make_config(broker, commands=True))

    def bug(name):
        raise KeyError("a bug in the store")  # not an EdgeClassifierError: nothing expects it
    monkeypatch.setattr(device.store, "delete_last", bug)
    running = Running(device)
    with Observer(broker, f"{BASE}/cmd/result") as seen, LogRecorder() as log:
        assert wait_until(lambda: device.publisher.stats["connected"])
        mark = seen.mark()
        seen.publish(f"{BASE}/cmd/delete_last", json.dumps({"class": "cat", "id": "d1"}))
        failed = json.loads(seen.wait_for(f"{BASE}/cmd/result", after=mark).payload)
        assert failed == {"ok": False, "action": "delete_last", "id": "d1",
                          "error": "internal error: 'a bug in the store'"}
        record = log.wait_for("failed", level=logging.ERROR)
        assert "DeleteLast" in record.getMessage() and record.exc_info  # with its traceback
        mark = seen.mark()
        seen.publish(f"{BASE}/cmd/capture", json.dumps({"class": "cat", "id": "c1"}))
        ok = json.loads(seen.wait_for(f"{BASE}/cmd/result", after=mark).payload)
        assert ok["ok"] and ok["id"] == "c1"  # the loop goes on: the next command works
    running.wait_frames(2)
    assert device.counters.event_errors == 1 and device.stats()["event_errors"] == 1
    running.finish()


# -- the service -----------------------------------------------------------------------------
def test_service_unit_exposure_is_at_most_2_5():
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd)"
    proc = subprocess.run([analyze, "security", "--offline=true",
                           str(REPO / "systemd" / "edge-classifier.service")],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-500:] + proc.stderr[-500:]
    assert float(match.group(1)) <= 2.5
