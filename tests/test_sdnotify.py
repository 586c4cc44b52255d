"""systemd notifications over real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from edge_classifier.device.sdnotify import Notifier, watchdog_interval


@pytest.fixture
def listener(tmp_path):
    """A datagram socket bound in a temp dir, like systemd's; yields (path, socket)."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def receive(sock) -> str:
    return sock.recv(4096).decode("utf-8")


def test_ready_sends_ready_and_status(listener):
    path, sock = listener
    with Notifier(environ={"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.ready("classifying")
    assert receive(sock) == "READY=1\nSTATUS=classifying"


def test_watchdog_stopping_and_status_messages(listener):
    path, sock = listener
    notifier = Notifier(path)
    notifier.watchdog()
    notifier.stopping()
    notifier.status("3 classes\n12 samples")
    assert [receive(sock) for _ in range(3)] == ["WATCHDOG=1", "STOPPING=1",
                                                 "STATUS=3 classes 12 samples"]
    assert notifier.sent == 3 and notifier.errors == 0
    notifier.close()


def test_abstract_namespace_socket():
    name = f"edge-classifier-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier(environ={"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert receive(sock) == "READY=1"
        notifier.close()
    finally:
        sock.close()


def test_without_notify_socket_does_nothing():
    notifier = Notifier(environ={})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.errors == 0


def test_vanished_socket_is_counted_not_raised(listener):
    path, sock = listener
    notifier = Notifier(path)
    assert notifier.watchdog()
    sock.close()
    os.unlink(path)
    assert notifier.watchdog() is False
    assert notifier.watchdog() is False
    assert notifier.errors == 2
    notifier.close()


def test_close_twice_and_no_sending_after_close(listener):
    path, sock = listener
    notifier = Notifier(path)
    notifier.close()
    notifier.close()
    assert notifier.ready() is False


def test_watchdog_interval_is_half_the_timeout():
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 15.0


def test_watchdog_interval_without_pid_applies_to_us():
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0


def test_watchdog_interval_for_another_process_is_none():
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=4242) is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_watchdog_interval_unset_or_invalid_is_none(usec):
    assert watchdog_interval({"WATCHDOG_USEC": usec}) is None
