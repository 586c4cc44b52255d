"""The transport-independent publisher: retained values, the prediction rate limit and the
offline queue (:class:`Publisher`), and :class:`StdoutPublisher`, used when no broker is
configured. :mod:`edge_classifier.comms.mqtt` adds the MQTT transport.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import sys
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from edge_classifier.core.clock import SYSTEM_CLOCK
from edge_classifier.comms.discovery import (AVAILABLE, MAX_DISCOVERY_BYTES, NOT_AVAILABLE,
                                             DiscoveryTracker, Topics, to_json)
from edge_classifier.errors import MqttFatalError, PublisherClosedError

SCORES_INTERVAL = 1.0  # seconds: the retained scores change at most this often with one state


class Publisher:
    """What the device loop publishes through (:mod:`edge_classifier.comms.mqtt` has the transports).

    Thread-safe; publishing never blocks on the network. While disconnected, the retained values
    (state, scores, discovery, the newest snapshot) are only remembered, and sent on every
    connect; other messages at QoS >= 1 wait in a queue of ``mqtt.max_queued`` and are sent in
    order after them. When the queue is full its *oldest* message is dropped (newer predictions
    matter more); QoS 0 messages are dropped while disconnected; ``stats["dropped"]`` counts both.

    ``stats`` keys: published, dropped, reconnects (connects after the first), connected (and
    the remembered values sent: what is published now goes out at once), callback_errors,
    rate_limited, refused (messages or subscriptions the broker refused), queued, last_error,
    network_restarts (new MQTT clients built after paho's network thread died),
    client_id_conflicts (connections lost to another client with the same client id), backoff
    (seconds before the next reconnect attempt), fatal_error (None, or why MQTT is off).

    **The device loop should poll** :attr:`failed` (cheap) and exit non-zero when it is true,
    e.g. ``publisher.raise_if_failed()`` once per frame: it raises :class:`MqttFatalError` with
    :attr:`fatal_error` as its message. Only :class:`~edge_classifier.comms.mqtt.MqttPublisher`
    ever fails.

    ``max_buttons`` caps the Home Assistant capture buttons (default: ``config.head.max_classes``
    when the config has it, else :data:`~edge_classifier.comms.discovery.DEFAULT_MAX_BUTTONS`).
    """

    def __init__(self, config, clock=None, log: Optional[logging.Logger] = None,
                 max_buttons: Optional[int] = None):
        self.config = config
        self.topics = Topics.from_config(config)
        self._qos = config.mqtt.qos
        self._clock = clock or SYSTEM_CLOCK
        self._log = log or logging.getLogger("edge_classifier.comms.mqtt")
        # _lock guards the fields below. A user thread never calls paho while holding it (paho
        # calls back into us while holding its own locks); paho's thread may.
        self._lock = threading.RLock()
        self._started = self._stopped = self._closed = False
        self._ready = False  # connected, and the values remembered meanwhile have been sent
        self._label: Optional[str] = None
        self._scores: Optional[bytes] = None
        self._scores_sent: Optional[bytes] = None  # the retained scores the broker holds
        self._scores_sent_at: Optional[float] = None  # when (by the clock), and with which label
        self._scores_label: Optional[str] = None
        self._snapshot: Optional[bytes] = None  # waiting to be sent
        self._last_prediction: Optional[float] = None
        self._queue: collections.deque = collections.deque(maxlen=config.mqtt.max_queued)
        self._discovery = DiscoveryTracker(config, max_buttons=max_buttons)
        self._without_button = 0  # classes left without a capture button (logged when it grows)
        self._fatal_error: Optional[str] = None
        # _status guards _stats and wakes wait_for(); a leaf lock, safe in any paho callback.
        self._status = threading.Condition(threading.Lock())
        self._stats: Dict[str, Any] = dict(
            published=0, dropped=0, reconnects=0, connected=False, callback_errors=0,
            rate_limited=0, refused=0, queued=0, last_error=None, network_restarts=0,
            client_id_conflicts=0, backoff=config.mqtt.reconnect_min, fatal_error=None)

    # --- status -----------------------------------------------------------------------------
    @property
    def stats(self) -> Dict[str, Any]:
        with self._status:
            return dict(self._stats)

    @property
    def failed(self) -> bool:
        """True once the transport has stopped for good (see :attr:`fatal_error`)."""
        return self._fatal_error is not None

    @property
    def fatal_error(self) -> Optional[str]:
        """Why the transport stopped for good (one line), or None while it works or retries."""
        return self._fatal_error

    def raise_if_failed(self) -> None:
        """Raise :class:`MqttFatalError` if :attr:`failed`; for the device loop to call often."""
        if self.failed:
            raise MqttFatalError(f"MQTT: {self._fatal_error}")

    def wait_for(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float) -> bool:
        """Block until ``predicate(stats)`` is true (True) or ``timeout`` seconds pass (False)."""
        with self._status:
            return self._status.wait_for(lambda: predicate(dict(self._stats)), timeout)

    def _update(self, **changes: Any) -> None:
        with self._status:
            for key, value in changes.items():
                self._stats[key] = value
            self._status.notify_all()

    def _report(self, level: int, message: str, *args: Any, **changes: Any) -> None:
        """Log a line and change the stats as one step: whoever sees either sees both."""
        with self._status:
            for key, value in changes.items():
                self._stats[key] = value
            self._log.log(level, message, *args)
            self._status.notify_all()

    def _count(self, key: str, n: int = 1) -> None:
        with self._status:
            self._stats[key] += n
            self._status.notify_all()

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "Publisher":
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop (publishing ``offline``) and release everything; safe to call twice."""
        try:
            self.stop()
        finally:
            self._closed = True

    def __enter__(self) -> "Publisher":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _begin(self) -> bool:
        """Mark the publisher started; False when it already was."""
        with self._lock:
            if self._closed or self._stopped:
                raise PublisherClosedError("the publisher was stopped; make a new one")
            if self._started:
                return False
            self._started = True
            return True

    def _end(self) -> bool:
        """Mark the publisher stopped; False when there is nothing to stop."""
        with self._lock:
            was_running = self._started and not self._stopped
            self._stopped, self._ready = True, False
            return was_running

    # --- what the loop publishes ----------------------------------------------------------------
    def set_classes(self, names) -> None:
        """The classes the head knows; updates (and re-sends) Home Assistant discovery."""
        with self._lock:
            changed = self._discovery.set_classes(names)
            send = changed and self._ready and self.config.mqtt.discovery
            messages = self._discovery.messages() if send else []
            left_out, grew = self._discovery.without_button, None
            if left_out > self._without_button and self.config.mqtt.commands:
                grew = self._without_button == 0
            self._without_button = left_out
        if grew is not None:
            self._log.log(logging.WARNING if grew else logging.DEBUG,
                          "Home Assistant discovery: %d of %d classes have no capture button "
                          "(at most %d buttons and %d bytes per discovery message)", left_out,
                          len(self._discovery.classes), self._discovery.max_buttons,
                          MAX_DISCOVERY_BYTES)
        for body in messages:
            self._transmit(self.topics.discovery, body, self._qos, True)

    def publish_state(self, label: str) -> bool:
        """Publish the smoothed label (retained) if it changed; True when it did."""
        with self._lock:
            if label == self._label:
                return False
            self._label = label
            ready = self._ready
        if ready:
            self._transmit(self.topics.state, label.encode("utf-8"), self._qos, True)
        return True

    def publish_prediction(self, payload: Dict[str, Any]) -> bool:
        """Publish a prediction (and its scores) unless one went out less than
        ``mqtt.prediction_interval`` ago by the clock; True when it was published. The
        retained scores go out only when they differ from what the broker already holds, at
        once when the state changed and otherwise at most once per :data:`SCORES_INTERVAL`
        (they are Home Assistant attributes, which its recorder stores on every change; the
        newest ones also go out on every connect). The state is the payload's ``state`` (the
        smoothed label, the sensor's state the scores are attributes of) where it has one,
        else its ``label``: a raw label flickering between two classes under a steady state
        does not send the scores on every frame."""
        now = self._clock.now()
        with self._lock:
            last = self._last_prediction
            limited = last is not None and now - last < self.config.mqtt.prediction_interval
            if not limited:
                self._last_prediction = now
        if limited:
            self._count("rate_limited")
            return False
        body = to_json(payload)
        scores = payload.get("scores")
        scores_body = to_json(scores) if isinstance(scores, dict) else None
        label = payload.get("state", payload.get("label"))
        with self._lock:
            self._scores = scores_body or self._scores
            sent_at = self._scores_sent_at
            send_scores = self._ready and scores_body is not None and \
                scores_body != self._scores_sent and (
                    sent_at is None or label != self._scores_label or
                    now - sent_at >= SCORES_INTERVAL or now < sent_at)
            if send_scores:
                self._scores_sent, self._scores_sent_at = scores_body, now
                self._scores_label = label
        self._emit(self.topics.prediction, body)
        if send_scores:
            self._transmit(self.topics.scores, scores_body, self._qos, True)
        return True

    def publish_stats(self, payload: Dict[str, Any]) -> None:
        self._emit(self.topics.stats, to_json(payload))

    def publish_result(self, payload: Dict[str, Any]) -> None:
        """Answer a command on ``<base>/cmd/result``."""
        self._emit(self.topics.result, to_json(payload))

    def publish_snapshot(self, jpeg: bytes) -> None:
        """Publish a JPEG (retained); while disconnected only the newest one waits."""
        with self._lock:
            ready = self._ready
            if not ready:
                self._snapshot = bytes(jpeg)
        if ready:
            self._transmit(self.topics.snapshot, bytes(jpeg), self._qos, True)

    # --- machinery ----------------------------------------------------------------------------
    def _emit(self, topic: str, body: bytes) -> None:
        """Send a non-retained message now, or queue it (QoS >= 1) until connected."""
        with self._lock:
            ready, queueing = self._ready, not (self._ready or self._stopped or self._qos == 0)
            dropped = not ready and (not queueing or len(self._queue) == self._queue.maxlen)
            if queueing:
                self._queue.append((topic, body))  # a full deque drops its oldest
            queued = len(self._queue)
        if ready:
            self._transmit(topic, body, self._qos, False)
            return
        if dropped:
            self._count("dropped")
        self._update(queued=queued)

    def _on_ready(self) -> None:
        """Connected: send discovery, the remembered values and the queue, then go live."""
        with self._lock:
            if self._stopped:
                return
            messages = []
            if self.config.mqtt.discovery:
                messages += [(self.topics.discovery, body, True)
                             for body in self._discovery.messages()]
            if self._label is not None:
                messages.append((self.topics.state, self._label.encode("utf-8"), True))
            if self._scores is not None:
                messages.append((self.topics.scores, self._scores, True))
                self._scores_sent = self._scores
            if self._snapshot is not None:
                messages.append((self.topics.snapshot, self._snapshot, True))
                self._snapshot = None
            messages += [(topic, body, False) for topic, body in self._queue]
            self._queue.clear()
            self._ready = True
            for topic, body, retain in messages:
                self._transmit(topic, body, self._qos, retain)
        self._update(queued=0, connected=True)

    def _transmit(self, topic: str, body: bytes, qos: int, retain: bool) -> None:
        raise NotImplementedError


def _display(body: bytes) -> Tuple[Any, Optional[str]]:
    try:
        text = body.decode("utf-8")
        return (json.loads(text) if text[:1] in ("{", "[") else text), None
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"
    except ValueError:  # starts like JSON but is not
        return text, None


class StdoutPublisher(Publisher):
    """Without a broker: every publish is one JSON line on standard output::

        {"topic": "edge_classifier/pi/state", "payload": "apple", "retained": true}

    JSON objects and arrays appear parsed; binary payloads (snapshots) as base64 with
    ``"encoding": "base64"``. Commands need a broker.
    """

    name = "stdout"

    def __init__(self, config, clock=None, log=None, stream=None, max_buttons=None):
        super().__init__(config, clock=clock, log=log, max_buttons=max_buttons)
        self._stream = stream  # None: sys.stdout at the time of writing
        self._write_lock = threading.Lock()

    def start(self) -> "StdoutPublisher":
        if self._begin():
            self._transmit(self.topics.availability, AVAILABLE.encode(), 1, True)
            self._on_ready()
        return self

    def stop(self) -> None:
        if self._end():
            self._transmit(self.topics.availability, NOT_AVAILABLE.encode(), 1, True)
            self._update(connected=False)

    def _transmit(self, topic: str, body: bytes, qos: int, retain: bool) -> None:
        payload, encoding = _display(body)
        line: Dict[str, Any] = {"topic": topic, "payload": payload, "retained": retain}
        if encoding:
            line["encoding"] = encoding
        try:
            with self._write_lock:
                stream = self._stream or sys.stdout
                stream.write(json.dumps(line, ensure_ascii=False) + "\n")
                stream.flush()
        except (OSError, ValueError) as exc:  # closed pipe or stream
            self._count("dropped")
            self._update(last_error=f"cannot write to standard output: {exc}")
            return
        self._count("published")
