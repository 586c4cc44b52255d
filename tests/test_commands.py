"""parse_command: every action, and every way a command can be wrong (no broker needed)."""

from __future__ import annotations

import json

import pytest

from edge_classifier.comms.commands import (ACTIONS, error_result, CommandError, CommandQueueError, handle_command,
                                      parse_command, result)
from edge_classifier.errors import EdgeClassifierError
from edge_classifier.comms.events import (Capture, ClearClass, DeleteClass, DeleteLast, RenameClass,
                                    Snapshot)

LIMIT = 4096


def parse(action, payload):
    if not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    return parse_command(action, payload, LIMIT)


def error(action, payload, max_payload=LIMIT) -> CommandError:
    if not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    with pytest.raises(CommandError) as info:
        parse_command(action, payload, max_payload)
    return info.value


@pytest.mark.parametrize("action, payload, expected", [
    ("capture", {"class": "apple"}, Capture(origin="mqtt", class_name="apple", count=1)),
    ("capture", {"class": "red apple", "count": 100, "id": "r1"},
     Capture(origin="mqtt", request_id="r1", class_name="red apple", count=100)),
    ("delete_last", {"class": "apple"}, DeleteLast(origin="mqtt", class_name="apple")),
    ("clear_class", {"class": "apple"}, ClearClass(origin="mqtt", class_name="apple")),
    ("delete_class", {"class": "apple", "id": "x"},
     DeleteClass(origin="mqtt", request_id="x", class_name="apple")),
    ("rename_class", {"class": "apple", "to": "pear"},
     RenameClass(origin="mqtt", class_name="apple", new_name="pear")),
    ("snapshot", {}, Snapshot(origin="mqtt")),
    ("snapshot", {"id": "s"}, Snapshot(origin="mqtt", request_id="s")),
])
def test_valid_commands_become_events(action, payload, expected):
    assert parse(action, payload) == expected


@pytest.mark.parametrize("payload", [b"", b"  \n"])
def test_snapshot_accepts_an_empty_payload(payload):
    assert parse_command("snapshot", payload, LIMIT) == Snapshot(origin="mqtt")


def test_every_action_is_known():
    assert set(ACTIONS) == {"capture", "delete_last", "clear_class", "delete_class",
                            "rename_class", "snapshot", "add_class", "delete_sample",
                            "file_inbox", "discard_inbox"}


def test_oversized_payload_is_rejected_before_parsing():
    exc = error("capture", b'{"class": "a", "x": "' + b"y" * 200 + b'"}', max_payload=64)
    assert "more than the limit of 64" in str(exc)


def test_payload_exactly_at_the_limit_is_accepted():
    payload = b'{"class": "apple"}'
    assert parse_command("capture", payload, len(payload)).class_name == "apple"


def test_non_utf8_payload_is_rejected():
    assert "not UTF-8" in str(error("capture", b'{"class": "\xff"}'))


@pytest.mark.parametrize("payload", [b"{", b"capture apple", b"{'class': 'a'}", b"[" * 4000])
def test_non_json_payload_is_rejected(payload):
    assert "not valid JSON" in str(error("capture", payload))


@pytest.mark.parametrize("payload, kind", [(b"[]", "list"), (b'"apple"', "str"), (b"3", "int"),
                                           (b"null", "NoneType")])
def test_payload_must_be_a_json_object(payload, kind):
    assert f"must be a JSON object, not {kind}" in str(error("capture", payload))


def test_unknown_action_names_the_known_ones_and_keeps_the_id():
    exc = error("explode", {"id": "r9"})
    assert "unknown action 'explode'" in str(exc) and "capture" in str(exc)
    assert error_result(exc) == {"ok": False, "action": "explode", "id": "r9", "error": str(exc)}


def test_long_unknown_action_is_shortened():
    exc = error("x" * 500, {})
    assert len(exc.action) <= 64 and len(str(exc)) < 300


@pytest.mark.parametrize("action, payload, fragment", [
    ("capture", {}, 'missing field "class"'),
    ("capture", b"", 'missing field "class"'),
    ("rename_class", {"class": "a"}, 'missing field "to"'),
    ("capture", {"class": "a", "colour": "red"}, 'unknown field "colour"'),
    ("snapshot", {"class": "a"}, 'unknown field "class"'),
    ("delete_last", {"class": "a", "count": 2}, 'unknown field "count"'),
    ("capture", {"class": 3}, "class name must be text"),
    ("capture", {"class": None}, "class name must be text"),
    ("capture", {"class": "a", "count": "2"}, '"count" must be a whole number'),
    ("capture", {"class": "a", "count": 2.0}, '"count" must be a whole number'),
    ("capture", {"class": "a", "count": True}, '"count" must be a whole number'),
    ("capture", {"class": "a", "count": 0}, '"count" must be between 1 and 100'),
    ("capture", {"class": "a", "count": 101}, '"count" must be between 1 and 100'),
    ("capture", {"class": "a", "id": 7}, '"id" must be a string'),
    ("capture", {"class": "a", "id": "x" * 65}, '"id" is longer than 64'),
    ("rename_class", {"class": "a", "to": "a"}, "are the same name"),
])
def test_malformed_fields_are_rejected_with_a_clear_message(action, payload, fragment):
    assert fragment in str(error(action, payload))


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", ".hidden", "..", "", " apple",
                                  "unknown", "x" * 65, "tab\there"])
def test_bad_class_names_are_rejected(name):
    exc = error("capture", {"class": name})
    assert exc.action == "capture" and '"class"' in str(exc)


def test_bad_new_name_in_rename_is_rejected():
    assert '"to"' in str(error("rename_class", {"class": "a", "to": "../b"}))


def test_error_result_echoes_the_id_when_it_could_be_read():
    exc = error("capture", {"class": "../x", "id": "req-1"})
    assert error_result(exc) == {"ok": False, "action": "capture", "id": "req-1", "error": str(exc)}


def test_error_result_has_a_null_id_when_the_payload_is_unreadable():
    assert error_result(error("capture", b"nope"))["id"] is None


def test_command_error_is_a_value_error_and_a_project_error():
    assert issubclass(CommandError, ValueError) and issubclass(CommandError, EdgeClassifierError)


def test_result_builds_the_answer_shape():
    assert result("capture", True, request_id="a", stored=5) == {
        "ok": True, "action": "capture", "id": "a", "stored": 5}


def test_handle_command_queues_valid_commands():
    queued = []
    assert handle_command("snapshot", b"", LIMIT, queued.append) is None
    assert queued == [Snapshot(origin="mqtt")]


def test_handle_command_answers_bad_commands_without_queueing():
    queued = []
    answer = handle_command("capture", b"[]", LIMIT, queued.append)
    assert answer["ok"] is False and queued == []


def test_handle_command_refuses_retained_commands():
    queued = []
    answer = handle_command("capture", b'{"class": "a", "id": "r"}', LIMIT, queued.append,
                            retained=True)
    assert answer["ok"] is False and answer["id"] == "r" and queued == []
    assert "retained commands are not run" in answer["error"]


def test_handle_command_ignores_answers_on_the_result_topic():
    queued = []
    assert handle_command("result", b'{"ok": true}', LIMIT, queued.append) is None
    assert queued == []


def test_handle_command_reports_a_failing_queue():
    def full(event):
        raise RuntimeError("queue is full")
    with pytest.raises(CommandQueueError) as info:
        handle_command("snapshot", b'{"id": "q"}', LIMIT, full)
    assert error_result(info.value)["id"] == "q"
    assert isinstance(info.value.__cause__, RuntimeError)
