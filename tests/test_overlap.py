"""The frame worker (device/overlap.py): ``Device.run`` finishes frame n — head, smoother,
outputs — beside the invoke of frame n+1. Frames finish in order, whatever else the loop does
(events, captures, the head's save) waits for the frame in flight, and an error of the worker
ends the run as an error of the loop would. No test here waits on time: the worker is held
and released with events."""

from __future__ import annotations

import json
import threading

import pytest
from devicekit import make_config
from mosquitto import BASE

from edge_classifier.comms.events import Capture
from edge_classifier.device.overlap import Overlap
from edge_classifier.frames.sources import ReplaySource


def test_frames_finish_in_order_and_the_next_waits_for_the_one_in_flight():
    gate, log = threading.Event(), []

    def finish(n):
        log.append(f"start {n}")
        gate.wait()
        log.append(f"end {n}")

    after = Overlap(finish)
    after.submit(1)
    submitter = threading.Thread(target=lambda: (after.submit(2), log.append("submitted 2")))
    submitter.start()
    gate.set()
    submitter.join()
    after.settle()
    assert log.index("end 1") < log.index("submitted 2")  # 2 was handed over after 1 ended
    assert [e for e in log if e != "submitted 2"] == ["start 1", "end 1", "start 2", "end 2"]
    assert not after.busy
    after.close()


def test_an_error_of_the_worker_is_raised_once_on_the_caller_and_the_worker_goes_on():
    done = []

    def finish(n):
        if n == 2:
            raise ValueError("frame 2 failed")
        done.append(n)

    after = Overlap(finish)
    after.submit(1)
    after.submit(2)
    with pytest.raises(ValueError, match="frame 2 failed"):
        after.settle()
    after.settle()  # raised once
    after.submit(3)
    after.settle()
    assert done == [1, 3]
    after.close()


def test_close_finishes_the_frame_in_flight_and_refuses_more():
    gate, done = threading.Event(), []
    after = Overlap(lambda n: (gate.wait(), done.append(n)))
    after.submit(1)
    closer = threading.Thread(target=after.close)
    closer.start()
    gate.set()
    closer.join()
    assert done == [1]
    with pytest.raises(RuntimeError, match="closed"):
        after.submit(2)
    after.close()  # safe twice


def predictions(capsys):
    lines = (json.loads(raw) for raw in capsys.readouterr().out.splitlines())
    return [line["payload"] for line in lines if line["topic"] == f"{BASE}/prediction"]


def test_run_publishes_every_frame_in_order_with_what_step_alone_gives(device_factory,
                                                                        capsys, tmp_path):
    device = device_factory(make_config(), state=tmp_path / "a")
    device.learner.capture("bird", device.source.read())
    device.learner.capture("cat", device.source.read())
    device.learner.save()
    device.run(frames=12)
    overlapped = predictions(capsys)
    device.close()
    again = device_factory(make_config(), state=tmp_path / "a")
    again.overlap = False
    again.run(frames=12)
    alone = predictions(capsys)
    assert [p["frame"] for p in overlapped] == list(range(1, 13))
    assert [(p["label"], p["state"]) for p in overlapped] == \
        [(p["label"], p["state"]) for p in alone]
    assert [p["confidence"] for p in overlapped] == pytest.approx(
        [p["confidence"] for p in alone], abs=1e-6)


class PostingSource:
    """A replay that posts ``event`` to the device while frame ``at`` is read."""

    def __init__(self, source, at, event):
        self.source, self.at, self.event, self.device, self.reads = source, at, event, None, 0

    def read(self):
        self.reads += 1
        if self.reads == self.at:
            self.device.post(self.event)
        return self.source.read()

    def close(self):
        self.source.close()


def test_a_capture_waits_for_the_frame_in_flight_and_the_next_frame_uses_it(
        device_factory, capsys, sample):
    posting = PostingSource(ReplaySource([sample("bird.bmp"), sample("cat.bmp")]), 5,
                            Capture(class_name="cat", origin="test"))
    device = device_factory(make_config(), source=posting)
    posting.device = device
    device.learner.capture("bird", ReplaySource([sample("bird.bmp")]).read())
    device.run(frames=8)
    frames = {p["frame"]: p for p in predictions(capsys)}
    assert sorted(frames) == list(range(1, 9))
    # frame 5 was finished with the old head (the event waited for it); frame 6 was captured
    # and predicted with the new one
    assert frames[5]["scores"].get("cat", 0.0) == 0.0  # a class with no sample yet
    assert frames[6]["scores"]["cat"] > 0.5 and frames[6]["label"] == "cat"
    assert device.store.counts() == {"bird": 1, "cat": 1}


def test_an_error_finishing_a_frame_ends_the_run_and_the_state_is_still_saved(
        device_factory, capsys, tmp_path):
    device = device_factory(make_config())
    device.learner.capture("bird", device.source.read())
    calls = []
    predict = device.learner.predict_embedding

    def failing(embedding):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the head broke on frame 3")
        return predict(embedding)
    device.learner.predict_embedding = failing
    assert device.learner.dirty
    with pytest.raises(RuntimeError, match="frame 3"):
        device.run(frames=50)
    assert device.counters.frames <= 4  # raised by the next frame's hand-over at the latest
    assert not device.learner.dirty  # shutdown saved the head
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out[-1]["topic"] == f"{BASE}/availability" and out[-1]["payload"] == "offline"
