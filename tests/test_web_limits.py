"""The studio's limits: uploads imported one picture per frame (the live view never stalls),
captures per class and second, uploads waiting. A real device, the real model, the real
server on 127.0.0.1; the loop is stepped by the test, frame by frame, on a fake clock."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
from waiting import wait_until
from webkit import TIMEOUT, Client, Multipart, Photos, jpeg_of, studio_factory, web_config

from edge_classifier.comms.web.limits import CaptureLimit
from edge_classifier.config import SourceConfig
from edge_classifier.core.clock import FakeClock

studio = pytest.fixture(studio_factory, name="studio")


def pictures(n):
    """``n`` distinct small pictures (distinct embeddings: none is stored as a copy)."""
    rng = np.random.default_rng(7)
    return [jpeg_of(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(n)]


def test_an_upload_is_imported_one_picture_per_frame(device_factory, sample):
    """Regression: the whole upload used to be embedded between two frames, stalling the
    loop for as long as it took; now at most one picture goes in between two frames, the
    page sees the progress, and the request is answered when all are in."""
    clock = FakeClock()
    photos = Photos(sample, "cat.bmp", fps=1000)
    device = device_factory(web_config(), clock=clock, source=photos)
    device.web.start()
    client = Client(device.web.url)
    answers = []
    upload = threading.Thread(target=lambda: answers.append(client.post(
        "/api/classes/pets/samples",
        Multipart(*[("images", f"{i}.jpg", p) for i, p in enumerate(pictures(4))]))))
    upload.start()
    assert wait_until(lambda: not device.events.empty(), TIMEOUT), "the upload's first picture"
    imported, progress = [], []
    while upload.is_alive() or not device.events.empty():
        before = sum(device.store.counts().values())
        device.apply_events()
        imported.append(sum(device.store.counts().values()) - before)
        progress.append(client.status()["uploads"])  # what a page opened now shows
        device.step(photos.read())
        if device.events.empty():  # the last answer is on its way to the client
            upload.join(TIMEOUT)
    assert imported == [1, 1, 1, 1]  # four pictures between four frames, one at a time
    assert progress[0] == [{"class": "pets", "done": 1, "total": 4}]
    assert progress[2] == [{"class": "pets", "done": 3, "total": 4}] and progress[-1] == []
    (code, answer), = answers
    assert code == 200 and answer["ok"] and answer["added"] == 4 and answer["samples"] == 4
    assert device.store.counts() == {"pets": 4}
    assert list(device.learner.head.classes) == ["pets"]  # refitted after the last picture


def test_an_upload_goes_on_while_no_browser_camera_streams(studio, backbones, tmp_path):
    """With the browser's camera as the only source and no browser streaming, no frame comes:
    the upload's pictures still go in, one per wait for a frame."""
    config = web_config().replace(source=SourceConfig(kind="browser"))
    s = studio(config=config, source=False, backbone=backbones(), state=tmp_path / "state")
    code, answer = s.client.post("/api/classes/pets/samples", Multipart(
        *[("images", f"{i}.jpg", p) for i, p in enumerate(pictures(3))]))
    assert code == 200 and answer["added"] == 3, answer
    assert s.device.counters.frames == 0 and s.device.store.counts() == {"pets": 3}


def test_captures_are_limited_per_class_to_the_hold_rate(studio):
    config = web_config()
    s = studio(config=replace(config, gpio=replace(config.gpio, hold_rate=1.0)))
    for _ in range(2):  # a burst of two seconds' worth passes
        code, answer = s.client.post("/api/classes/cat/capture", {})
        assert code == 200 and answer["ok"], answer
    code, answer = s.client.post("/api/classes/cat/capture", {})
    assert code == 429 and answer["error"] == ("too many captures of 'cat': at most 1 a second "
                                               "(gpio.hold_rate); try again in 1.0 s")
    code, answer = s.client.post("/api/classes/dog/capture", {})  # each class on its own
    assert code == 200 and answer["ok"], answer
    s.clock.advance(1.0)
    code, answer = s.client.post("/api/classes/cat/capture", {})
    assert code == 200 and answer["ok"], answer
    assert s.device.store.counts() == {"cat": 3, "dog": 1}


def test_the_capture_limit_refills_at_its_rate_and_takes_a_big_request_when_full():
    clock = FakeClock()
    limit = CaptureLimit(rate=5.0, now=clock.now)  # bucket: 10
    assert limit.take("Cat", 10) is None
    assert limit.take("cat", 1) is not None and limit.retry_after("CAT") == pytest.approx(0.2)
    clock.advance(0.2)
    assert limit.take("cat", 1) is None
    clock.advance(10)
    assert limit.take("cat", 50) is None  # more than the bucket: taken when full ...
    clock.advance(5)
    assert limit.take("cat", 1) is not None  # ... and paid for afterwards
    assert limit.retry_after("cat", 1) == pytest.approx(3.2)
