"""Remote commands through a real mosquitto: valid ones reach on_event, malformed ones get an
error on <base>/cmd/result at once, and nothing a callback does stops paho's network thread."""

from __future__ import annotations

import json
import queue

import pytest
from mosquitto import (CMD, RESULT, LogRecorder, Observer, mqtt_config, publisher_factory,
                       running_broker)
from waiting import wait_until

from edge_classifier.comms.events import (Capture, ClearClass, DeleteClass, DeleteLast, RenameClass,
                                    Snapshot)

broker = pytest.fixture(running_broker, name="broker")
publishers = pytest.fixture(publisher_factory, name="publishers")

TIMEOUT = 10


@pytest.fixture
def device(broker, publishers):
    """(publisher, events queue, observer of the results) with commands on."""
    events = queue.Queue()
    pub = publishers(mqtt_config(broker, commands=True, max_payload=256), events.put).start()
    assert pub.wait_for(lambda s: s["connected"], TIMEOUT)  # subscribed by now
    with Observer(broker, RESULT) as seen:
        yield pub, events, seen


def send(seen, action, payload):
    if not isinstance(payload, (bytes, str)):
        payload = json.dumps(payload)
    seen.publish(CMD + action, payload)


def next_result(seen, after):
    return json.loads(seen.wait_for(RESULT, after=after).payload)


@pytest.mark.parametrize("action, payload, expected", [
    ("capture", {"class": "apple", "count": 3, "id": "r1"},
     Capture(origin="mqtt", request_id="r1", class_name="apple", count=3)),
    ("delete_last", {"class": "apple"}, DeleteLast(origin="mqtt", class_name="apple")),
    ("clear_class", {"class": "apple"}, ClearClass(origin="mqtt", class_name="apple")),
    ("delete_class", {"class": "apple"}, DeleteClass(origin="mqtt", class_name="apple")),
    ("rename_class", {"class": "apple", "to": "pear", "id": "r2"},
     RenameClass(origin="mqtt", request_id="r2", class_name="apple", new_name="pear")),
    ("snapshot", b"", Snapshot(origin="mqtt")),
])
def test_valid_commands_are_passed_to_on_event(device, action, payload, expected):
    pub, events, seen = device
    send(seen, action, payload)
    assert events.get(timeout=TIMEOUT) == expected
    assert seen.matching(RESULT) == []  # the loop answers valid commands, not the publisher


def test_the_loop_answers_through_publish_result(device):
    pub, events, seen = device
    send(seen, "capture", {"class": "apple", "id": "r7"})
    event = events.get(timeout=TIMEOUT)
    pub.publish_result({"ok": True, "action": "capture", "id": event.request_id, "stored": 1})
    assert next_result(seen, 0) == {"ok": True, "action": "capture", "id": "r7", "stored": 1}


@pytest.mark.parametrize("action, payload, fragment, request_id", [
    ("capture", json.dumps({"class": "a", "pad": "x" * 300, "id": "big"}),
     "more than the limit of 256", None),
    ("capture", b"not json at all", "not valid JSON", None),
    ("capture", b'{"class": "\xff\xfe"}', "not UTF-8", None),
    ("capture", b'["apple"]', "must be a JSON object", None),
    ("launch", {"id": "u1"}, "unknown action 'launch'", "u1"),
    ("capture", {"class": "apple", "colour": "red", "id": "u2"}, 'unknown field "colour"', "u2"),
    ("capture", {"class": "../../etc/passwd", "id": "p1"}, "path separator", "p1"),
    ("capture", {"class": "apple", "count": 1000}, "between 1 and 100", None),
    ("rename_class", {"class": "apple"}, 'missing field "to"', None),
    ("delete_class", {"class": 5}, "must be text", None),
])
def test_malformed_commands_get_an_error_result(device, action, payload, fragment, request_id):
    pub, events, seen = device
    send(seen, action, payload)
    answer = next_result(seen, 0)
    assert answer["ok"] is False and fragment in answer["error"]
    assert answer["action"] == action and answer["id"] == request_id
    assert events.empty()


def test_results_published_by_others_are_not_commands(device):
    pub, events, seen = device
    seen.publish(RESULT, json.dumps({"ok": True}))
    send(seen, "launch", {})  # the fence: answered, so everything before it was handled
    assert next_result(seen, 1)["action"] == "launch"
    assert [json.loads(m.payload)["ok"] for m in seen.matching(RESULT)] == [True, False]
    assert events.empty()


def test_a_retained_command_is_not_run_again_on_connect(broker, publishers):
    events = queue.Queue()
    with Observer(broker, RESULT) as seen:
        seen.publish(CMD + "capture", json.dumps({"class": "apple", "id": "old"}), retain=True)
        publishers(mqtt_config(broker, commands=True), events.put).start()
        answer = next_result(seen, 0)
        assert answer["ok"] is False and answer["id"] == "old"
        assert "retained commands are not run" in answer["error"]
        assert events.empty()
        seen.publish(CMD + "capture", b"", retain=True)  # clear the retained message


def test_an_exception_in_on_event_does_not_stop_the_network_thread(broker, publishers):
    events = []

    def on_event(event):
        if not events:
            events.append(None)
            raise RuntimeError("the loop's queue exploded")
        events.append(event)

    pub = publishers(mqtt_config(broker, commands=True), on_event).start()
    assert pub.wait_for(lambda s: s["connected"], TIMEOUT)
    with Observer(broker, RESULT) as seen, LogRecorder() as log:
        send(seen, "snapshot", {"id": "first"})
        failed = next_result(seen, 0)
        assert failed == {"ok": False, "action": "snapshot", "id": "first",
                          "error": "snapshot: the device could not accept the command "
                                   "(RuntimeError)"}
        log.wait_for("the loop's queue exploded", level=40)
        send(seen, "launch", {"id": "second"})  # still answered: the thread is alive
        assert next_result(seen, 1)["id"] == "second"
        send(seen, "snapshot", {"id": "third"})
        assert wait_until(lambda: len(events) >= 2)  # on_event is not part of stats: poll it
        assert len(events) == 2
    assert events[1] == Snapshot(origin="mqtt", request_id="third")
    assert pub.stats["callback_errors"] == 1 and pub.stats["connected"] is True


def test_no_commands_unless_enabled(broker, publishers):
    events = queue.Queue()
    pub = publishers(mqtt_config(broker, commands=False), events.put).start()
    assert pub.wait_for(lambda s: s["connected"], TIMEOUT)
    with Observer(broker, RESULT, "homeassistant/device/dev1/config") as seen:
        seen.wait_for("homeassistant/device/dev1/config")
        after = seen.mark()
        send(seen, "capture", {"class": "apple"})
        send(seen, "launch", {})
        seen.publish("homeassistant/status", "online")  # the fence: discovery is re-sent
        seen.wait_for("homeassistant/device/dev1/config", after=after)
        assert seen.matching(RESULT) == [] and events.empty()
