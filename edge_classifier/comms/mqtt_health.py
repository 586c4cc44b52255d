"""Judging an MQTT link's health, without a broker: a client id two devices share, and paho's
network thread dying. :class:`~edge_classifier.comms.mqtt.MqttPublisher` acts on the verdicts.

::

    watch = ClientIdWatch("edge-classifier-pi", reconnect_min=1, reconnect_max=60)
    watch.connected(now=0.0)
    verdict = watch.disconnected(now=0.4, reason_value=142, reason="Session taken over")
    verdict.conflict, verdict.backoff   # True, 2.0: log verdict.message, wait longer

    deaths = ThreadDeaths(reconnect_min=1, reconnect_max=60)
    plan = deaths.died(struct.error("'H' format requires 0 <= number <= 65535"))
    plan.fatal, plan.delay              # False, 1.0: build a new client in 1 s
    deaths.died(struct.error("'H' format requires 0 <= number <= 65535")).fatal   # True
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason: another client connected with our id
SHORT_CONNECTION = 10.0  # s; a connection the broker closes sooner counts as "dropped at once"
SUSPECT_AFTER = 3  # connections in a row dropped at once: another client probably has our id
MAX_REBUILDS = 5  # thread deaths in a row without a connection before giving up


def shorten(text: str, limit: int = 80) -> str:
    """``text``, or its first ``limit`` characters and how many more there are."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


@dataclass(frozen=True)
class Verdict:
    """What a lost connection says about the client id."""

    conflict: bool  # another client probably uses the same client id
    first: bool  # the first conflict of this run of dropped connections: log it as an error
    backoff: float  # seconds to wait before the next reconnect attempt
    recovered: bool = False  # the connection had held: the back-off is back to normal
    message: str = ""


class ClientIdWatch:
    """Tells a client id used by two clients from an ordinary lost connection.

    MQTT allows one connection per client id: when a second client connects with it, the broker
    closes the first one, which reconnects and closes the second, and so on. MQTT 5 brokers may
    say so (DISCONNECT reason 142, "Session taken over"); mosquitto 2.0.11 just closes the
    socket, which paho reports as "Unspecified error". So: reason 142, or ``SUSPECT_AFTER``
    connections in a row that the broker closed within ``SHORT_CONNECTION`` seconds (or within
    twice the current back-off), is a conflict. Each conflict doubles the reconnect back-off (up
    to ``reconnect_max``), so two devices knock each other off rarely instead of every second;
    a connection that holds longer brings it back to ``reconnect_min``. Not thread-safe: paho's
    thread calls it.
    """

    def __init__(self, client_id: str, reconnect_min: float, reconnect_max: float):
        self.client_id = client_id
        self._shown = repr(shorten(client_id))
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.backoff = reconnect_min
        self.short_drops = 0
        self._connected_at: Optional[float] = None
        self._in_conflict = False

    def connected(self, now: float) -> None:
        self._connected_at = now

    def disconnected(self, now: float, reason_value: int, reason: str) -> Verdict:
        """A connection the broker (or the network) closed, ``now`` by the publisher's clock."""
        began, self._connected_at = self._connected_at, None
        lasted = now - began if began is not None else 0.0
        taken_over = reason_value == SESSION_TAKEN_OVER
        if not taken_over and lasted >= max(SHORT_CONNECTION, 2 * self.backoff):
            recovered = self._in_conflict or self.backoff != self.reconnect_min
            self.short_drops, self._in_conflict = 0, False
            self.backoff = self.reconnect_min
            return Verdict(False, False, self.backoff, recovered=recovered)
        self.short_drops += 1
        if not (taken_over or self.short_drops >= SUSPECT_AFTER):
            return Verdict(False, False, self.backoff)
        first, self._in_conflict = not self._in_conflict, True
        self.backoff = min(self.reconnect_max, max(2 * self.backoff, self.reconnect_min))
        if taken_over:
            why = (f"the broker closed the connection: {reason} (reason 142), another client "
                   f"connected with the same client id {self._shown}")
        else:
            why = (f"the broker closed the connection right after accepting it "
                   f"{self.short_drops} times in a row ({reason}): another client is probably "
                   f"connected with the same client id {self._shown}")
        message = (f"{why}. Two devices must not share a client id: give each its own "
                   f"device_id, or set mqtt.client_id to a unique value; backing off "
                   f"(next attempt in {self.backoff:g} s)")
        return Verdict(True, first, self.backoff, message=message)


@dataclass(frozen=True)
class Plan:
    """What to do about paho's network thread having stopped."""

    fatal: bool  # a new client cannot help: MQTT is off for good
    delay: float  # seconds to wait before building a new client (when not fatal)
    message: str


def describe(error: Optional[BaseException]) -> str:
    """``"struct.error: 'H' format requires 0 <= number <= 65535"``; None: ``"no exception"``."""
    if error is None:
        return "it ended without an exception"
    kind = type(error)
    name = "struct.error" if kind is struct.error else kind.__name__
    text = str(error)
    return f"{name}: {text}" if text else name


def _hint(error: Optional[BaseException]) -> str:
    if isinstance(error, struct.error) and "65535" in str(error):
        return (" (paho cannot encode a string longer than 65,535 bytes: check the length of "
                "mqtt.client_id, device_id, base_topic, the user name and the password)")
    return ""


class ThreadDeaths:
    """Decides, each time paho's network thread stops while the publisher runs, whether to build
    a new client (after a back-off from ``reconnect_min``, doubling up to ``reconnect_max``) or
    to give up: the same error again before any connection succeeded (a new client would fail
    the same way, e.g. a client id too long to encode), or ``MAX_REBUILDS`` deaths in a row
    without a connection. :meth:`connected` starts afresh. Not thread-safe: the publisher calls
    it under its lock.
    """

    def __init__(self, reconnect_min: float, reconnect_max: float):
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.in_a_row = 0
        self._last: Optional[str] = None

    def connected(self) -> None:
        self.in_a_row, self._last = 0, None

    def died(self, error: Optional[BaseException]) -> Plan:
        what = describe(error)
        same = what == self._last
        self.in_a_row += 1
        self._last = what
        if same or self.in_a_row > MAX_REBUILDS:
            why = ("with the same error again" if same
                   else f"{self.in_a_row} times without connecting")
            return Plan(True, 0.0, f"paho's network thread stopped {why} ({what}); a new "
                                   f"client cannot help, MQTT is off{_hint(error)}")
        delay = min(self.reconnect_max, self.reconnect_min * 2 ** (self.in_a_row - 1))
        return Plan(False, delay, f"paho's network thread stopped ({what}); building a new "
                                  f"client in {delay:g} s{_hint(error)}")
