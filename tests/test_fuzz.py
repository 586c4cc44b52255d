"""Property-based fuzzing (hypothesis) of everything that reads input from outside: remote
commands, the config file, CSV and folder data sets, and the sample store.

Each property: only the module's documented error type escapes, whatever comes out is valid,
error messages stay small (they never echo a whole input), payload size limits hold before
anything is decoded, and nothing is written outside the target folder. 2,420 generated inputs
in all (the ``max_examples`` below, 200 of them commands sent through a real mosquitto), plus
800 deterministic nesting depths around the JSON decoder's recursion limit.
"""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import re
import shutil
import socket
import tempfile
import threading
import tracemalloc
import unicodedata
from dataclasses import fields
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mosquitto import CMD, RESULT, TIMEOUT, Mosquitto, Observer, mqtt_config

from edge_classifier.comms import commands
from edge_classifier.config import schema as config_module
from edge_classifier.comms.commands import (ACTIONS, error_result, MAX_COUNT, MAX_ID_LENGTH, CommandError,
                                      CommandQueueError, handle_command, parse_command)
from edge_classifier.config import Config, parse_config
from edge_classifier.datasets.folders import CsvDataset, FolderDataset, read_csv, scan_folder
from edge_classifier.comms.discovery import to_json
from edge_classifier.errors import ConfigError, DatasetError, StoreError
from edge_classifier.comms.events import (AddClass, Capture, ClearClass, DeleteClass, DeleteLast,
                                    DeleteSample, DiscardInbox, Event, FileInbox,
                                    RenameClass, Snapshot)
from edge_classifier.frames.images import IMAGE_SUFFIXES
from edge_classifier.core.names import validate_class_name
from edge_classifier.learning.store import SampleStore

FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.filter_too_much, HealthCheck.large_base_example])
SMALL_RESULT = 2048  # bytes: a result never grows with the payload (which may be 1 MiB)

# --- shared strategies -----------------------------------------------------------------------
TRICKY_NAMES = [
    "apple", "red apple", "Äpfel", "日本", "🍎", "x" * 64, "x" * 65, "", " ", " apple", "apple ",
    ".", "..", "...", ".hidden", "../x", "../../etc/passwd", "/etc/passwd", "/", "a/b", "a\\b",
    "\\", "C:\\Windows", "~", "~root", "unknown", "UNKNOWN", "Unknown", "a\x00b", "\x00", "\n",
    "a\nb", "tab\there", "\x7f", "\u202ereversed", "\ufeffbom", "zero\u200bwidth", "\u2028",
    "\udcff", "\ud800", "con", "NUL", "a:b", "*", "?", "%2e%2e%2f", "-", "$HOME", "a;b", "a,b",
    '"quoted"',
]
# any code point, lone surrogates and control characters included (cheaper than asking
# st.characters() for every category)
any_char = st.one_of(st.characters(), st.integers(0, 0x9F).map(chr),
                     st.integers(0xD800, 0xDFFF).map(chr))
names = st.one_of(st.sampled_from(TRICKY_NAMES), st.text(max_size=70),
                  st.text(any_char, max_size=12),
                  st.builds("/".join, st.lists(st.sampled_from(["..", ".", "a", ""]),
                                               min_size=1, max_size=4)))
huge_ints = st.integers(min_value=-(10 ** 400), max_value=10 ** 400)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), huge_ints,
                    st.floats(allow_nan=True, allow_infinity=True), st.text(any_char, max_size=20),
                    names)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(any_char, max_size=8), inner,
                                                 max_size=4)), max_leaves=8)
counts = st.one_of(st.integers(-3, MAX_COUNT + 3), st.integers(), huge_ints, st.booleans(),
                   st.floats(allow_nan=True), st.just("5"), json_values)
ids = st.one_of(st.none(), st.text(max_size=MAX_ID_LENGTH + 4), st.text(any_char, max_size=8),
                st.integers(), st.just("x" * 5000), json_values)
keys = st.one_of(st.sampled_from(["class", "to", "count", "id", "Class", "class ", ""]),
                 st.text(any_char, max_size=50))
command_objects = st.one_of(
    st.fixed_dictionaries({"class": names}, optional={"count": counts, "id": ids, "to": names}),
    st.fixed_dictionaries({}, optional={"class": json_values, "to": json_values, "id": ids}),
    st.dictionaries(keys, json_values, max_size=6),
    json_values)


@st.composite
def json_payloads(draw, objects=command_objects):
    text = json.dumps(draw(objects), ensure_ascii=draw(st.booleans()), allow_nan=True)
    body = text.encode("utf-8", "surrogatepass")  # a lone surrogate: not UTF-8 any more
    cut = draw(st.none() | st.integers(0, len(body)))
    return body if cut is None else body[:cut]


def _nested(depth, where):
    """JSON nested ``depth`` deep: lists in "count", "id", "class" or at the top, or objects
    in "count" ("object")."""
    inner = ('{"a": ' * depth + "1" + "}" * depth if where == "object"
             else "[" * depth + "]" * depth)
    return {"count": '{"class": "a", "count": %s}', "id": '{"id": %s}', "top": "%s",
            "object": '{"class": "a", "count": %s}', "class": '{"class": %s}'
            }[where].replace("%s", inner).encode()


deep_payloads = st.builds(_nested, st.integers(1, 1100),
                          st.sampled_from(["count", "id", "top", "object", "class"]))
payloads = st.one_of(
    json_payloads(), json_payloads(), st.binary(max_size=300), deep_payloads,
    st.sampled_from([b"", b" \n\t", b"{}", b"null", b"[]", b'"x"', b"NaN", b"-Infinity",
                     b"1e999", b"\xef\xbb\xbf{}", b'{"class": "a"}\x00', b'{"class":"a"}{}',
                     b'{"class": "a", "class": "b"}', b'{"count": 1' + b"0" * 5000 + b"}",
                     b'{"class":"a","count":' + b"9" * 4000 + b"}"]),
    st.builds(lambda n, c: c * n, st.integers(0, 6000), st.sampled_from([b"[", b"{", b"1", b"\xff",
                                                                       b" "])))
actions = st.one_of(st.sampled_from([*ACTIONS, "result", "launch", "", "..", "../capture",
                                     "capture/..", "cmd/capture", "Capture", " capture", "#", "+"]),
                    st.text(max_size=100), names)
EVENT_TYPES = {"capture": Capture, "delete_last": DeleteLast, "clear_class": ClearClass,
               "delete_class": DeleteClass, "rename_class": RenameClass, "snapshot": Snapshot,
               "add_class": AddClass, "delete_sample": DeleteSample, "file_inbox": FileInbox,
               "discard_inbox": DiscardInbox}


def check_event(event, action, payload, max_payload):
    """A valid command: the right event type, valid names, a count in range, a usable id."""
    assert type(event) is EVENT_TYPES[action] and isinstance(event, Event)
    assert event.origin == "mqtt" and len(payload) <= max_payload
    rid = event.request_id
    assert rid is None or (isinstance(rid, str) and len(rid) <= MAX_ID_LENGTH)
    for name in (getattr(event, "class_name", "x"), getattr(event, "new_name", "x")):
        assert validate_class_name(name) == name  # never path-like, never "unknown"
    if isinstance(event, Capture):
        assert type(event.count) is int and 1 <= event.count <= MAX_COUNT
    if isinstance(event, RenameClass):
        assert event.new_name != event.class_name
    for sid in (getattr(event, "sample_id", None), getattr(event, "item", None)):
        assert sid is None or re.fullmatch("[0-9a-f]{20}", sid)  # never names a path
    to_json({"id": rid})  # what the loop echoes in its result encodes as UTF-8


def check_result(answer, payload):
    """A failed command's result: small, UTF-8 JSON, never the whole payload."""
    body = to_json(answer)  # exactly what the publisher sends; must not raise
    assert len(body) <= SMALL_RESULT
    assert json.loads(body) == answer
    assert answer["ok"] is False and isinstance(answer["action"], str)
    assert answer["id"] is None or (isinstance(answer["id"], str)
                                    and len(answer["id"]) <= MAX_ID_LENGTH)
    assert isinstance(answer["error"], str) and answer["error"]
    if len(payload) > SMALL_RESULT:
        assert payload.decode("utf-8", "replace") not in answer["error"]


# --- commands --------------------------------------------------------------------------------
@settings(max_examples=800, **FUZZ)
@given(action=actions, payload=payloads,
       max_payload=st.one_of(st.just(4096), st.integers(64, 1 << 20)))
def test_parse_command_gives_a_valid_event_or_a_small_command_error(action, payload,
                                                                   max_payload):
    try:
        event = parse_command(action, payload, max_payload)
    except CommandError as exc:
        check_result(error_result(exc), payload)
    else:
        check_event(event, action, payload, max_payload)


@settings(max_examples=300, **FUZZ)
@given(action=actions, payload=payloads, max_payload=st.integers(64, 1 << 20),
       retained=st.booleans(), refuse=st.booleans())
def test_handle_command_passes_on_valid_commands_and_answers_the_rest(action, payload,
                                                                     max_payload, retained,
                                                                     refuse):
    received = []

    def on_event(event):
        received.append(event)
        if refuse:
            raise RuntimeError("the loop's queue is full")

    raised = None
    try:
        answer = handle_command(action, payload, max_payload, on_event, retained=retained)
    except CommandQueueError as exc:  # on_event raised: the caller logs it and answers
        raised, answer = exc, error_result(exc)
    if action == "result":  # answers on <base>/cmd/result are never commands
        assert answer is None and received == [] and raised is None
        return
    try:
        expected = parse_command(action, payload, max_payload)
    except CommandError:
        expected = None
    if expected is None or retained:  # refused at once; a retained command would run again
        check_result(answer, payload)
        assert received == [] and raised is None
        if expected is not None:
            assert "retained commands are not run" in answer["error"]
            assert answer["id"] == expected.request_id
        return
    assert received == [expected]
    check_event(expected, action, payload, max_payload)
    if refuse:
        assert isinstance(raised.__cause__, RuntimeError)
        check_result(answer, payload)
        assert "could not accept" in answer["error"] and answer["id"] == expected.request_id
    else:
        assert answer is None and raised is None


class _NoDecoding:
    """Stands in for the json module inside commands: decoding would fail the test."""

    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(*args, **kwargs):
        raise AssertionError("an oversized payload was decoded")


@settings(max_examples=150, **FUZZ)
@given(action=actions, max_payload=st.integers(64, 1 << 16), extra=st.integers(1, 5000),
       body=st.sampled_from([b'{"class": "apple"}', b"[", b"\xff", b"{" * 10, b" "]))
def test_a_payload_over_the_limit_is_rejected_before_it_is_decoded(action, max_payload, extra,
                                                                  body):
    payload = (body * (max_payload // len(body) + extra + 1))[:max_payload + extra]
    with mock.patch.object(commands, "json", _NoDecoding):
        with pytest.raises(CommandError, match=f"more than the limit of {max_payload}") as info:
            parse_command(action, payload, max_payload)
    check_result(error_result(info.value), payload)


def test_a_huge_payload_is_rejected_without_copying_it():
    payload = b"[" * (64 << 20)  # 64 MiB: decoding it would need far more than that
    tracemalloc.start()
    try:
        with mock.patch.object(commands, "json", _NoDecoding):
            with pytest.raises(CommandError) as info:
                parse_command("capture", payload, 4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"{peak} bytes allocated to reject a 64 MiB payload"
    assert str(info.value) == (f"capture: payload is {len(payload)} bytes, more than the limit "
                               f"of 4096")


@pytest.mark.parametrize("where", ["count", "id", "class", "top", "object"])
def test_json_nested_as_deep_as_the_decoder_allows_is_refused_cleanly(where):
    """Around the recursion limit, decoding succeeds but showing the value in the error could
    recurse too deep; every depth must end in a CommandError."""
    for depth in range(850, 1010):
        with pytest.raises(CommandError):
            parse_command("capture", _nested(depth, where), 1 << 20)


# --- config ----------------------------------------------------------------------------------
_SECTION_CLASSES = {"source": config_module.SourceConfig, "model": config_module.ModelConfig,
                    "head": config_module.HeadConfig, "smoothing": config_module.SmoothingConfig,
                    "gpio": config_module.GpioConfig, "mqtt": config_module.MqttConfig,
                    "classes": config_module.ClassConfig}
_FIELDS = {section: {f.name for f in fields(cls)} for section, cls in _SECTION_CLASSES.items()}
_TOP_FIELDS = {f.name for f in fields(Config)}
toml_scalars = st.one_of(st.booleans(), st.integers(-(2 ** 63), 2 ** 63 - 1), huge_ints,
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                         names, st.dates())
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=5)
URLS = ["mqtt://127.0.0.1:1883", "mqtts://u:p@host", "mqtt://[::1]", "mqtt://h:0",
        "mqtt://h:99999", "http://x", "mqtt://", "mqtt://h/path", "mqtt://h?q", "mqtt://a b",
        "mqtt://[::1", "mqtt://u:p@", "mqtt://h:-1", "mqtt://\u2100", "mqtts://h:8883"]


def _valid_ish(section, f):
    """Mostly valid values for one field, so whole documents are often valid."""
    key = f"{section}.{f.name}" if section else f.name
    if key in config_module._CHOICES:
        return st.sampled_from(config_module._CHOICES[key])
    if key in config_module._RANGES:
        lo, hi = config_module._RANGES[key]
        return st.integers(lo, hi) if f.type in (int, "int") else st.floats(lo, hi)
    if f.type in (bool, "bool"):
        return st.booleans()
    if "Optional" in str(f.type):
        return st.integers(0, 63)
    if key == "mqtt.broker":
        return st.sampled_from(URLS)
    if key in ("mqtt.base_topic", "mqtt.discovery_prefix"):
        return st.sampled_from(["", "a/b", "#", "/x", "x/", "a+b", "home/pi"])
    if key == "device_id":
        return st.sampled_from(["dev1", "pi-4_b", "", "a b", "日本"])
    if key == "classes.name":
        return names
    return st.text(max_size=10)


def _items(section, cls, max_size):
    """A table of up to ``max_size`` of ``cls``'s fields, each mostly valid, sometimes not."""
    item = st.one_of([st.tuples(st.just(f.name), st.one_of(*[_valid_ish(section, f)] * 3,
                                                          toml_values)) for f in fields(cls)])
    return st.lists(item, max_size=max_size).map(dict)


def _with_unknown(tables):
    extra = st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(["Mqtt", "mqtt "])),
                            toml_values, min_size=1, max_size=2)
    return st.one_of(*[tables] * 7, st.builds(lambda d, e: {**e, **d}, tables, extra))


_top = st.one_of([st.tuples(st.just(f.name), st.one_of(*[_valid_ish("", f)] * 3, toml_values))
                  for f in fields(Config) if f.name in ("device_id", "state_dir", "keyboard")]
                 + [st.tuples(st.just(name), st.one_of(
                     _with_unknown(_items(name, _SECTION_CLASSES[name], 5)), toml_values))
                    for name in ("source", "model", "head", "smoothing", "gpio", "mqtt")]
                 + [st.tuples(st.just("classes"), st.one_of(
                     st.lists(_with_unknown(_items("classes", config_module.ClassConfig, 3)),
                              max_size=3), toml_values))])
config_docs = _with_unknown(st.lists(_top, max_size=5).map(dict))


def _toml_key(key):
    return json.dumps(key, ensure_ascii=False)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    return value.isoformat()  # a date


def to_toml(doc, tables=True):
    """TOML text for ``doc``: inline values, or ``[table]`` / ``[[array]]`` sections."""
    lines, sections = [], []
    for key, value in doc.items():
        if tables and isinstance(value, dict):
            sections.append(f"[{_toml_key(key)}]\n" + to_toml(value, tables=False))
        elif (tables and isinstance(value, list) and value
              and all(isinstance(v, dict) for v in value)):
            sections += [f"[[{_toml_key(key)}]]\n" + to_toml(v, tables=False) for v in value]
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines + sections) + "\n"


_KEY_MESSAGE = re.compile(r"config: (?P<top>[a-z_]+)(\[\d+\])?(\.(?P<leaf>[a-z_]+)(\[\d+\])?)?: .+",
                          re.DOTALL)


def check_config(text):
    try:
        config = parse_config(text)
    except ConfigError as exc:
        message = str(exc)
        assert len(message) < 20000
        if message.startswith(("config: not valid TOML (", "config: unknown key ")):
            return
        match = _KEY_MESSAGE.fullmatch(message)
        assert match, f"the message names no key: {message!r}"
        top, leaf = match["top"], match["leaf"]
        assert top in _TOP_FIELDS, message
        if leaf:
            assert leaf in _FIELDS[top], message
    else:
        assert isinstance(config, Config)


@settings(max_examples=300, **FUZZ)
@given(doc=config_docs, tables=st.booleans())
@example(doc={"source": {"crop": [False]}}, tables=False)  # an index after the key
def test_parse_config_on_generated_documents(doc, tables):
    check_config(to_toml(doc, tables))


_FLOAT_KEYS = [(section, f.name) for section, cls in _SECTION_CLASSES.items()
               for f in fields(cls) if f.type in (float, "float")]
edge_texts = st.one_of(
    st.builds(lambda key, n: f"[{key[0]}]\n{key[1]} = {n}\n", st.sampled_from(_FLOAT_KEYS),
              st.one_of(st.integers(10 ** 308, 10 ** 400), st.integers(-(10 ** 400), -(10 ** 308)),
                        st.integers(2 ** 63, 2 ** 70))),
    st.builds(lambda n: "x = " + "[" * n + "]" * n, st.integers(1, 3000)),
    st.builds(lambda n: "x = " + "{a = " * n + "1" + "}" * n, st.integers(1, 3000)),
    st.builds(lambda n: "[" + ".".join(["a"] * n) + "]", st.integers(1, 3000)),
    st.builds(lambda n: "[mqtt]\nkeepalive = " + "9" * n, st.integers(1, 6000)))


@settings(max_examples=200, **FUZZ)
@given(doc=config_docs, text=st.one_of(st.text(max_size=200), edge_texts),
       mutation=st.integers(0, 3), at=st.integers(0, 10_000),
       junk=st.text(any_char, min_size=1, max_size=5))
def test_parse_config_on_arbitrary_and_damaged_text(doc, text, mutation, at, junk):
    if mutation == 0:
        check_config(text)
        return
    valid = to_toml(doc)
    at %= len(valid) + 1
    check_config({1: valid[:at] + junk + valid[at:], 2: valid[:at] + valid[at + 1:],
                  3: valid[:at]}[mutation])


# --- file trees: nothing written outside the target ------------------------------------------
def tree_snapshot(root):
    """{relative path: (kind, size, mtime)} of every file and folder under ``root``."""
    root = os.fsencode(root)
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            seen[os.path.relpath(os.path.join(folder, name), root)] = ("dir",)
        for name in files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            seen[os.path.relpath(path, root)] = ("file", info.st_size, info.st_mtime_ns)
    return seen


def changed_paths(before, after):
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def _inside(relpath, folder):
    relpath, folder = os.fsencode(relpath), os.fsencode(folder)
    return relpath == folder or relpath.startswith(folder + b"/")


# --- CSV data sets ---------------------------------------------------------------------------
csv_cells = st.one_of(names.filter(lambda s: s == s.encode("utf-8", "ignore").decode()),
                      st.sampled_from(["cat.jpg", "img/cat.jpg", "../../../etc/passwd",
                                       "/etc/shadow", "C:\\x.jpg", "a,b.jpg", 'q"uote.jpg',
                                       "line\nbreak.jpg", "  spaced.png  ", "\x00.jpg",
                                       "file", "labels", "FILE"]))
label_cells = st.one_of(
    st.builds(lambda xs, sep: sep.join(xs),
              st.lists(csv_cells, max_size=4), st.sampled_from([";", " ; ", ";;", ","])),
    csv_cells)
csv_rows = st.lists(st.one_of(st.tuples(csv_cells, label_cells).map(list),
                              st.lists(csv_cells, max_size=4)), max_size=8)


@st.composite
def csv_files(draw):
    kind = draw(st.sampled_from(["rows", "rows", "rows", "text", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8")
    rows = draw(csv_rows)
    if draw(st.booleans()):
        rows.insert(0, [draw(st.sampled_from(["file", "File ", "FILE"])),
                        draw(st.sampled_from(["labels", " Labels", "label"]))])
    out = io.StringIO()
    writer = csv.writer(out, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL,
                                                           csv.QUOTE_NONNUMERIC])),
                        lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])))
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def test_read_csv_gives_a_consistent_data_set_or_a_dataset_error(tmp_path):
    neighbour = tmp_path / "neighbour.txt"
    neighbour.write_text("untouched")

    @settings(max_examples=200, **FUZZ)
    @given(content=csv_files(), name=st.sampled_from(["data.csv", "ünï cødé.csv", "-.csv"]))
    def check(content, name):
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        try:
            path = folder / name
            path.write_bytes(content)
            before = tree_snapshot(tmp_path)
            try:
                data = read_csv(path)
            except DatasetError as exc:
                assert str(path) in str(exc)
            else:
                assert isinstance(data, CsvDataset)
                assert len(data.paths) == len(data.label_sets) > 0
                assert data.class_names == sorted(set(data.class_names))
                base = os.path.dirname(os.path.abspath(path))
                for file, labels in zip(data.paths, data.label_sets):
                    assert os.path.isabs(file) or file.startswith(base)
                    assert labels == sorted(set(labels))
                    for label in labels:
                        assert validate_class_name(label) == label
                        assert label in data.class_names
                assert data.indicator().shape == (len(data.paths), len(data.class_names))
            assert tree_snapshot(tmp_path) == before  # reading writes nothing
        finally:
            shutil.rmtree(folder)

    check()
    assert neighbour.read_text() == "untouched"


# --- folder data sets ------------------------------------------------------------------------
fs_names = st.one_of(
    st.text(st.characters(exclude_characters="/\x00").filter(
        lambda c: unicodedata.category(c) != "Cs"), min_size=1, max_size=20
    ).map(lambda s: s.encode("utf-8")),
    st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")),
    st.sampled_from([b"apple", b"pear", b"unknown", b"...", b".hidden", b" apple", b"a\\b",
                     b"x" * 65, b"\xff\xfe", b"caf\xc3\xa9", b"tab\there", b"\x7f"]),
).filter(lambda b: b not in (b".", b".."))
entries = st.tuples(fs_names, st.sampled_from([b"", *[s.encode() for s in IMAGE_SUFFIXES],
                                               b".JPG", b".txt", b".jpg.txt", b".npy"]),
                    st.sampled_from(["file", "file", "file", "dir"]))
trees = st.tuples(st.dictionaries(fs_names, st.lists(entries, max_size=5), max_size=5),
                  st.lists(entries, max_size=3))


def _make(path, kind):
    try:
        if kind == "dir":
            os.mkdir(path)
        else:
            with open(path, "xb") as f:
                f.write(b"not really an image")
    except FileExistsError:
        pass


def test_scan_folder_gives_a_consistent_data_set_or_a_dataset_error(tmp_path):
    @settings(max_examples=150, **FUZZ)
    @given(tree=trees)
    def check(tree):
        classes, loose = tree
        root = tempfile.mkdtemp(dir=tmp_path)
        try:
            broot = os.fsencode(root)
            for folder, files in classes.items():
                _make(os.path.join(broot, folder), "dir")
                for name, suffix, kind in files:
                    if os.path.isdir(os.path.join(broot, folder)):
                        _make(os.path.join(broot, folder, name + suffix), kind)
            for name, suffix, kind in loose:
                _make(os.path.join(broot, name + suffix), kind)
            before = tree_snapshot(tmp_path)
            try:
                data = scan_folder(root)
            except DatasetError as exc:
                assert root in str(exc)
            else:
                assert isinstance(data, FolderDataset) and data.root == root
                assert data.class_names == sorted(set(data.class_names))
                assert len(data.paths) == len(data.labels) > 0
                assert set(data.labels.tolist()) == set(range(len(data.class_names)))
                for name in data.class_names:
                    assert validate_class_name(name) == name
                for path, label in zip(data.paths, data.labels):
                    assert os.path.dirname(path) == os.path.join(root, data.class_names[label])
                    base = os.path.basename(path)
                    assert os.path.isfile(path) and not base.startswith(".")
                    assert base.lower().endswith(IMAGE_SUFFIXES)
            assert tree_snapshot(tmp_path) == before  # scanning writes nothing
        finally:
            shutil.rmtree(root)

    check()


# --- the sample store ------------------------------------------------------------------------
BACKBONE = {"model": "fuzz", "sha256": "f" * 64, "resize": "crop", "embedding_dim": 4}
pool = st.one_of(st.sampled_from(["apple", "pear", "Äpfel 2"]), names)
views = st.one_of(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.just(4)),
               elements=st.floats(-1e3, 1e3, width=32)),
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)),
    hnp.arrays(np.float64, st.tuples(st.integers(1, 2), st.just(4)),
               elements=st.sampled_from([np.nan, np.inf, -np.inf, 1e300, 0.5])))
thumbnails = st.none() | hnp.arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12),
                                                        st.just(3)))
sample_ids = st.one_of(st.none(), st.none(), st.text(max_size=25), st.just("../../../x" * 2),
                       st.text("0123456789abcdef", min_size=20, max_size=20))
store_ops = st.lists(st.one_of(
    st.tuples(st.just("add"), pool, views, thumbnails, sample_ids),
    st.tuples(st.just("add"), pool, views, thumbnails, sample_ids),
    st.tuples(st.just("rename"), pool, pool),
    st.tuples(st.sampled_from(["delete_class", "clear_class", "delete_last"]), pool)),
    min_size=1, max_size=6)


def _apply(store, op):
    kind, *args = op
    if kind == "add":
        name, array, thumbnail, sample_id = args
        return store.add_sample(name, array, thumbnail, sample_id=sample_id)
    if kind == "rename":
        return store.rename_class(*args)
    return getattr(store, kind)(*args)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_the_sample_store_only_raises_store_errors_and_writes_only_its_folder(tmp_path):
    @settings(max_examples=120, **FUZZ)
    @given(ops=store_ops)
    def check(ops):
        parent = Path(tempfile.mkdtemp(dir=tmp_path))
        try:
            (parent / "neighbour").mkdir()
            (parent / "neighbour" / "keep.txt").write_text("keep")
            (parent / "state-sibling.json").write_text("{}")
            before = tree_snapshot(parent)
            store = SampleStore(parent / "state", backbone=BACKBONE, thumbnail_size=8)
            for op in ops:
                try:
                    _apply(store, op)
                except StoreError:
                    pass
            changed = changed_paths(before, tree_snapshot(parent))
            assert changed and all(_inside(p, "state") for p in changed), sorted(changed)
            reopened = SampleStore(parent / "state", backbone=BACKBONE, thumbnail_size=8)
            assert reopened.problems == []
            assert reopened.classes == store.classes and reopened.counts() == store.counts()
            matrix, labels, _ = reopened.samples_matrix()
            assert matrix.shape[0] == len(labels) == len(store)
            assert np.isfinite(matrix).all()
        finally:
            shutil.rmtree(parent)

    check()


# --- commands end to end through a real mosquitto --------------------------------------------
E2E_LIMIT = 512
# One topic level mosquitto accepts and "cmd/+" matches: UTF-8 without control characters,
# non-characters, '/', '+' or '#' (the parsing tests above cover every other action string).
topic_level = st.text(st.characters(exclude_characters="/+#").filter(
    lambda c: unicodedata.category(c) not in ("Cc", "Cs", "Cn")), max_size=40)
e2e_actions = st.one_of(st.sampled_from(ACTIONS), st.sampled_from(ACTIONS), topic_level,
                        st.sampled_from(["launch", "", "..", "Capture"])
                        ).filter(lambda a: a != "result")
e2e_payloads = st.one_of(payloads, st.binary(min_size=E2E_LIMIT - 8, max_size=E2E_LIMIT + 8),
                         json_payloads(st.fixed_dictionaries({"class": names},
                                                             optional={"id": ids})))


def _paho_thread_alive(publisher):
    return any(t.name == f"paho-mqtt-client-{publisher.client_id}" and t.is_alive()
               for t in threading.enumerate())


def test_generated_commands_through_a_real_broker_are_all_answered(tmp_path):
    from edge_classifier.comms.mqtt import make_publisher
    events = queue.Queue()
    tally = {"results": 0, "events": 0}
    broker = Mosquitto(tmp_path)
    with open(broker.config_path, "a") as conf:
        # answers go out at once (Nagle's algorithm against delayed ACKs costs 40 ms each)
        conf.write("set_tcp_nodelay true\n")
    with broker, Observer(broker, RESULT) as seen, \
            make_publisher(mqtt_config(broker, commands=True, discovery=False,
                                       max_payload=E2E_LIMIT), events.put) as publisher:
        seen.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the same
        assert publisher.wait_for(lambda s: s["connected"], TIMEOUT), publisher.stats

        @settings(max_examples=200, **FUZZ)
        @given(action=e2e_actions, payload=e2e_payloads)
        def roundtrip(action, payload):
            try:
                expected = parse_command(action, payload, E2E_LIMIT)
            except CommandError as exc:
                expected = error_result(exc)
            after = seen.mark()
            seen.publish(CMD + action, payload)
            if isinstance(expected, Event):
                assert events.get(timeout=TIMEOUT) == expected
                tally["events"] += 1
            else:
                answer = json.loads(seen.wait_for(RESULT, after=after).payload)
                assert answer == expected
                check_result(answer, payload)
                tally["results"] += 1

        roundtrip()
        # a valid command still works: paho's network thread survived all of the above
        seen.publish(CMD + "capture", json.dumps({"class": "apple", "id": "last"}))
        assert events.get(timeout=TIMEOUT) == Capture(origin="mqtt", request_id="last",
                                                      class_name="apple")
        seen.publish(CMD + "launch", json.dumps({"id": "fence"}))  # answered after the rest
        seen.wait_until(lambda messages: any(json.loads(m.payload)["id"] == "fence"
                                             for m in messages if m.topic == RESULT))
        assert len(seen.matching(RESULT)) == tally["results"] + 1  # no stray answers
        assert events.empty()
        assert _paho_thread_alive(publisher)
        stats = publisher.stats
        assert stats["callback_errors"] == 0 and stats["connected"] is True, stats
    assert tally["events"] > 0 and tally["results"] > 0, tally
