"""The stdout publisher (no broker) and the publishing rules every publisher shares: state only on
change, the prediction rate limit (with a fake clock), the bounded queue, close twice."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from mosquitto import mqtt_config

from edge_classifier.core.clock import FakeClock
from edge_classifier.comms.mqtt import (PublisherClosedError, StdoutPublisher, make_publisher)

BASE = "edge_classifier/dev1"
PREDICTION = {"label": "apple", "confidence": 0.9, "scores": {"apple": 0.9, "pear": 0.1},
              "unknown": False, "timestamp": 1.5, "frame": 7, "model": "m", "head": "knn"}


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def topics(stream):
    return [line["topic"] for line in lines(stream)]


def publisher(clock=None, **mqtt):
    stream = io.StringIO()
    return StdoutPublisher(mqtt_config(None, **mqtt), clock=clock, stream=stream), stream


def test_make_publisher_without_a_broker_writes_json_lines_to_stdout(capsys):
    with make_publisher(mqtt_config(None, discovery=False), on_event=None) as pub:
        assert isinstance(pub, StdoutPublisher)
        pub.publish_state("apple")
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == [
        {"topic": f"{BASE}/availability", "payload": "online", "retained": True},
        {"topic": f"{BASE}/state", "payload": "apple", "retained": True},
        {"topic": f"{BASE}/availability", "payload": "offline", "retained": True},
    ]


def test_json_payloads_are_parsed_and_binary_ones_base64():
    pub, stream = publisher(discovery=False)
    with pub:
        pub.publish_prediction(PREDICTION)
        pub.publish_snapshot(b"\xff\xd8jpeg")
    by_topic = {line["topic"]: line for line in lines(stream)}
    assert by_topic[f"{BASE}/prediction"] == {"topic": f"{BASE}/prediction",
                                              "payload": PREDICTION, "retained": False}
    assert by_topic[f"{BASE}/scores"]["payload"] == {"apple": 0.9, "pear": 0.1}
    assert by_topic[f"{BASE}/scores"]["retained"] is True
    snap = by_topic[f"{BASE}/snapshot"]
    assert snap["encoding"] == "base64" and base64.b64decode(snap["payload"]) == b"\xff\xd8jpeg"


def test_numpy_values_are_published_as_plain_json():
    pub, stream = publisher(discovery=False)
    with pub:
        pub.publish_prediction({"label": "a", "confidence": np.float32(0.5),
                                "scores": {"a": np.float64(0.25)}, "frame": np.int64(3)})
    prediction = [x for x in lines(stream) if x["topic"] == f"{BASE}/prediction"][0]
    assert prediction["payload"] == {"label": "a", "confidence": 0.5, "scores": {"a": 0.25},
                                     "frame": 3}


def test_discovery_is_written_on_start_and_when_the_classes_change():
    pub, stream = publisher(commands=True)
    with pub:
        pub.set_classes(["apple"])
        pub.set_classes(["apple"])  # unchanged: not sent again
    discovery = [x for x in lines(stream) if x["topic"] == "homeassistant/device/dev1/config"]
    assert len(discovery) == 2  # on start (no classes), and after the first set_classes
    assert all(x["retained"] for x in discovery)
    assert "Capture apple" not in json.dumps(discovery[0]["payload"])
    assert "Capture apple" in json.dumps(discovery[1]["payload"])


def test_state_is_published_only_when_it_changes():
    pub, stream = publisher(discovery=False)
    with pub:
        assert pub.publish_state("apple") is True
        assert pub.publish_state("apple") is False
        assert pub.publish_state("pear") is True
        assert pub.publish_state("pear") is False
        assert pub.publish_state("apple") is True
    states = [x["payload"] for x in lines(stream) if x["topic"] == f"{BASE}/state"]
    assert states == ["apple", "pear", "apple"]


def test_predictions_are_rate_limited_by_the_injected_clock():
    clock = FakeClock()
    pub, stream = publisher(clock=clock, discovery=False, prediction_interval=1.0)
    with pub:
        assert pub.publish_prediction(PREDICTION) is True
        clock.advance(0.5)
        assert pub.publish_prediction(PREDICTION) is False
        clock.advance(0.49)
        assert pub.publish_prediction(PREDICTION) is False
        clock.advance(0.01)
        assert pub.publish_prediction(PREDICTION) is True
        assert pub.publish_prediction(PREDICTION) is False
        clock.advance(5)
        assert pub.publish_prediction(PREDICTION) is True
    assert topics(stream).count(f"{BASE}/prediction") == 3
    assert topics(stream).count(f"{BASE}/scores") == 1  # retained, and the same each time
    assert pub.stats["rate_limited"] == 3


def test_the_retained_scores_are_sent_only_when_they_change():
    clock = FakeClock()
    pub, stream = publisher(clock, discovery=False, prediction_interval=0.0)
    other = dict(PREDICTION, scores={k: 1 - v for k, v in PREDICTION["scores"].items()})
    with pub:
        for payload in (PREDICTION, PREDICTION, other, other, PREDICTION):
            assert pub.publish_prediction(payload) is True
            clock.advance(1.0)  # one label: new scores go out at most once a second
    assert topics(stream).count(f"{BASE}/prediction") == 5
    sent = [json.loads(line)["payload"] for line in stream.getvalue().splitlines()
            if json.loads(line)["topic"] == f"{BASE}/scores"]
    assert sent == [PREDICTION["scores"], other["scores"], PREDICTION["scores"]]


def test_messages_before_start_wait_and_the_oldest_are_dropped_when_the_queue_is_full():
    pub, stream = publisher(discovery=False, max_queued=3)
    for i in range(5):
        pub.publish_stats({"n": i})
    pub.publish_state("apple")
    pub.publish_state("pear")
    assert pub.stats["queued"] == 3 and pub.stats["dropped"] == 2
    with pub:
        pass
    payloads = [(x["topic"], x["payload"]) for x in lines(stream)]
    assert payloads == [
        (f"{BASE}/availability", "online"),
        (f"{BASE}/state", "pear"),  # only the newest retained value, never the queue's copies
        (f"{BASE}/stats", {"n": 2}), (f"{BASE}/stats", {"n": 3}), (f"{BASE}/stats", {"n": 4}),
        (f"{BASE}/availability", "offline"),
    ]
    assert pub.stats["queued"] == 0


def test_qos0_messages_are_dropped_while_not_connected():
    pub, stream = publisher(discovery=False, qos=0)
    pub.publish_result({"ok": True})
    assert pub.stats["dropped"] == 1 and pub.stats["queued"] == 0


def test_close_is_safe_twice_and_a_closed_publisher_cannot_start_again():
    pub, stream = publisher(discovery=False)
    pub.start()
    pub.close()
    pub.close()
    assert topics(stream).count(f"{BASE}/availability") == 2
    with pytest.raises(PublisherClosedError):
        pub.start()
    pub.publish_stats({"late": True})  # ignored, never raises
    assert topics(stream).count(f"{BASE}/stats") == 0


def test_stats_count_what_was_written():
    pub, stream = publisher(discovery=False)
    with pub:
        pub.publish_result({"ok": True})
        assert pub.stats["connected"] is True
    assert pub.stats["published"] == len(lines(stream)) == 3
    assert pub.stats["connected"] is False


def test_a_closed_stream_counts_drops_instead_of_raising():
    pub, stream = publisher(discovery=False)
    pub.start()
    stream.close()
    pub.publish_result({"ok": True})
    assert pub.stats["dropped"] == 1 and "standard output" in pub.stats["last_error"]


def test_a_flickering_label_under_a_steady_state_sends_the_scores_once_a_second():
    """The device's payloads carry the smoothed ``state``: the scores are its attributes, so
    a raw label that changes every frame (an object between two classes) does not send them
    every frame; a change of the state does, at once."""
    clock = FakeClock()
    pub, stream = publisher(clock, discovery=False, prediction_interval=0.0)
    with pub:
        for frame in range(16):  # 2 s at 8 frames a second, the raw label flipping each frame
            label = ("apple", "pear")[frame % 2]
            pub.publish_prediction(dict(PREDICTION, label=label, state="apple",
                                        scores={"apple": 0.5 + frame / 100,
                                                "pear": 0.5 - frame / 100}))
            clock.advance(0.125)
        pub.publish_prediction(dict(PREDICTION, label="pear", state="pear",
                                    scores={"apple": 0.1, "pear": 0.9}))
    assert topics(stream).count(f"{BASE}/prediction") == 17
    sent = [json.loads(line)["payload"]["apple"] for line in stream.getvalue().splitlines()
            if json.loads(line)["topic"] == f"{BASE}/scores"]
    assert sent == [0.5, 0.58, 0.1]  # t = 0, 1 s, and the new state at once
