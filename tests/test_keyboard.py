"""Keyboard control through a real pseudo-terminal: keys written to the master side."""

from __future__ import annotations

import io
import os
import pty
import queue
import termios

import pytest
from waiting import TIMEOUT

from edge_classifier.comms.events import Capture, ClearClass, DeleteLast, Stop
from edge_classifier.device.keyboard import KeyboardControl


@pytest.fixture
def terminal():
    """(master fd, slave file object) of a fresh pty."""
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "rb", buffering=0)
    yield master, stream
    stream.close()
    os.close(master)


def start(stream, names=("apple", "banana")):
    events = queue.Queue()
    return KeyboardControl(lambda: list(names), events.put, stream=stream), events


def next_event(events):
    return events.get(timeout=TIMEOUT)  # an upper bound: the key was written already


def test_digit_captures_nth_class(terminal):
    master, stream = terminal
    keys, events = start(stream)
    os.write(master, b"2")
    event = next_event(events)
    keys.close()
    assert event == Capture(class_name="banana", origin="keyboard")


def test_d_c_q_send_delete_clear_and_stop(terminal):
    master, stream = terminal
    keys, events = start(stream)
    os.write(master, b"dcq")
    got = [next_event(events) for _ in range(3)]
    keys.close()
    assert got == [DeleteLast(class_name=None, origin="keyboard"),
                   ClearClass(class_name=None, origin="keyboard"), Stop(origin="keyboard")]


def test_digit_beyond_class_list_and_other_keys_are_ignored(terminal):
    master, stream = terminal
    keys, events = start(stream, names=["apple"])
    os.write(master, b"5x\x1b[A1")  # no class 5, an unknown key, an arrow key, then class 1
    event = next_event(events)
    keys.close()
    assert event == Capture(class_name="apple", origin="keyboard")
    assert events.empty()


def test_class_list_is_read_at_key_time(terminal):
    master, stream = terminal
    names = ["apple"]
    events = queue.Queue()
    keys = KeyboardControl(lambda: list(names), events.put, stream=stream)
    names.append("cherry")
    os.write(master, b"2")
    event = next_event(events)
    keys.close()
    assert event.class_name == "cherry"


def test_cbreak_while_running_and_terminal_restored_on_close(terminal):
    master, stream = terminal
    before = termios.tcgetattr(stream.fileno())
    keys, _ = start(stream)
    during = termios.tcgetattr(stream.fileno())
    assert keys.active
    assert not during[3] & termios.ICANON and not during[3] & termios.ECHO
    keys.close()
    keys.close()  # safe twice
    assert termios.tcgetattr(stream.fileno()) == before
    assert not keys.active


def test_exception_in_on_event_is_counted_and_thread_goes_on(terminal):
    master, stream = terminal
    events = queue.Queue()

    def on_event(event):
        if isinstance(event, DeleteLast):
            raise RuntimeError("queue is broken")
        events.put(event)

    keys = KeyboardControl(lambda: ["apple"], on_event, stream=stream)
    os.write(master, b"d1")
    event = next_event(events)
    keys.close()
    assert event.class_name == "apple"
    assert keys.callback_errors == 1


def test_not_a_terminal_starts_nothing():
    keys = KeyboardControl(lambda: ["apple"], lambda e: None, stream=io.StringIO("1"))
    assert not keys.active
    keys.close()


def test_terminal_restored_when_the_thread_fails(terminal):
    master, stream = terminal
    before = termios.tcgetattr(stream.fileno())

    class Broken(KeyboardControl):
        def _event_for(self, key):
            raise RuntimeError("bug")

    keys = Broken(lambda: ["apple"], lambda e: None, stream=stream)
    os.write(master, b"1")
    keys._thread.join(timeout=TIMEOUT)
    assert not keys.active
    assert termios.tcgetattr(stream.fileno()) == before
    keys.close()


def test_thread_ends_when_the_terminal_hangs_up():
    master, slave = pty.openpty()
    with os.fdopen(slave, "rb", buffering=0) as stream:
        keys, _ = start(stream)
        os.close(master)
        keys._thread.join(timeout=TIMEOUT)
        assert not keys.active
        keys.close()
