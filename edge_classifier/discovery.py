"""What the device announces and where: its topics, Home Assistant device discovery, and the
transport-independent :class:`Publisher` base (retained values, rate limit, offline queue) that
:mod:`edge_classifier.mqtt` builds its publishers on.

Home Assistant device-based discovery: one retained message describes the whole device.

::

    payload = discovery_payload(config, ["apple", "banana"])
    topic = Topics.from_config(config).discovery   # homeassistant/device/<device_id>/config

The payload (keys as in Home Assistant's documentation for device discovery)::

    {"dev": {"ids": ["edge_classifier_<device_id>"], "name": ..., "mf": ..., "mdl": ..., "sw": ...},
     "o": {"name": "edge-classifier", "sw": "<version>"},
     "availability": [{"topic": "<base>/availability", ...}],
     "qos": <mqtt.qos>,
     "cmps": {"label": {"p": "sensor", "state_topic": "<base>/state",
                        "json_attributes_topic": "<base>/scores", ...},
              "confidence": {"p": "sensor", "state_topic": "<base>/prediction",
                             "value_template": "{{ ... value_json.confidence ... }}", ...},
              "snapshot": {"p": "camera", "topic": "<base>/snapshot", ...},
              # with mqtt.commands only:
              "take_snapshot": {"p": "button", "command_topic": "<base>/cmd/snapshot", ...},
              "capture_apple_<hash>": {"p": "button", "command_topic": "<base>/cmd/capture",
                                       "payload_press": "{\\"class\\": \\"apple\\"}", ...}}}

Component keys and unique ids are derived from the device id and the class name only, so they are
the same after every restart. A component that disappears (a class deleted or renamed) is removed
the way Home Assistant documents it: one update lists it with only its platform
(``{"p": "button"}``), then a second update leaves it out (:class:`DiscoveryTracker`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import __version__
from .clock import SYSTEM_CLOCK
from .errors import EdgeClassifierError

ORIGIN_NAME = "edge-classifier"
AVAILABLE, NOT_AVAILABLE = "online", "offline"


class MqttError(EdgeClassifierError):
    """Publishing over MQTT failed or was misused."""


class PublisherClosedError(MqttError, RuntimeError):
    """The publisher was stopped and cannot be started again."""


@dataclass(frozen=True)
class Topics:
    """Every topic the device uses, from the configuration."""

    base: str
    availability: str
    state: str
    prediction: str
    scores: str
    stats: str
    snapshot: str
    command_prefix: str  # "<base>/cmd/"; subscribe to command_prefix + "+"
    result: str
    discovery: str
    ha_status: str

    @classmethod
    def from_config(cls, config) -> "Topics":
        base, prefix = config.base_topic, config.mqtt.discovery_prefix
        return cls(base=base, availability=f"{base}/availability", state=f"{base}/state",
                   prediction=f"{base}/prediction", scores=f"{base}/scores",
                   stats=f"{base}/stats", snapshot=f"{base}/snapshot",
                   command_prefix=f"{base}/cmd/", result=f"{base}/cmd/result",
                   discovery=f"{prefix}/device/{config.device_id}/config",
                   ha_status=f"{prefix}/status")


def component_key(class_name: str) -> str:
    """The stable component key of a class's capture button: ``capture_<slug>_<hash>``.

    The slug keeps names readable in Home Assistant's logs; the hash (of the exact name) keeps
    names that differ only in case or punctuation apart.
    """
    ascii_name = unicodedata.normalize("NFKD", class_name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")[:24].rstrip("_")
    digest = hashlib.sha256(class_name.encode("utf-8")).hexdigest()[:8]
    return f"capture_{slug}_{digest}" if slug else f"capture_{digest}"


def components(config, classes: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """The component configurations (``cmps``) for the device, keyed by stable component key."""
    topics, dev = Topics.from_config(config), config.device_id
    cmps: Dict[str, Dict[str, Any]] = {
        "label": {"p": "sensor", "name": "Label", "unique_id": f"{dev}_label",
                  "state_topic": topics.state, "json_attributes_topic": topics.scores,
                  "icon": "mdi:label-outline"},
        "confidence": {"p": "sensor", "name": "Confidence", "unique_id": f"{dev}_confidence",
                       "state_topic": topics.prediction,
                       "value_template": "{{ (value_json.confidence * 100) | round(1) }}",
                       "unit_of_measurement": "%", "state_class": "measurement",
                       "icon": "mdi:percent"},
        "snapshot": {"p": "camera", "name": "Snapshot", "unique_id": f"{dev}_snapshot",
                     "topic": topics.snapshot},
    }
    if config.mqtt.commands:
        cmps["take_snapshot"] = {
            "p": "button", "name": "Take snapshot", "unique_id": f"{dev}_take_snapshot",
            "command_topic": topics.command_prefix + "snapshot", "payload_press": "{}",
            "icon": "mdi:camera"}
        for name in classes:
            key = component_key(name)
            cmps[key] = {
                "p": "button", "name": f"Capture {name}", "unique_id": f"{dev}_{key}",
                "command_topic": topics.command_prefix + "capture",
                "payload_press": json.dumps({"class": name}, ensure_ascii=False),
                "icon": "mdi:camera-plus"}
    return cmps


def discovery_payload(config, classes: Sequence[str],
                      removed: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The device discovery payload for ``classes``.

    ``removed`` maps component keys to their platform; each is listed as ``{"p": platform}``, which
    tells Home Assistant to remove that component (send the payload without it afterwards).
    """
    topics = Topics.from_config(config)
    cmps = components(config, classes)
    for key, platform in (removed or {}).items():
        if key not in cmps:
            cmps[key] = {"p": platform}
    return {
        "dev": {"ids": [f"edge_classifier_{config.device_id}"], "name": config.device_id,
                "mf": "edge-classifier", "mdl": "Teachable camera classifier",
                "sw": __version__},
        "o": {"name": ORIGIN_NAME, "sw": __version__},
        "availability": [{"topic": topics.availability, "payload_available": AVAILABLE,
                          "payload_not_available": NOT_AVAILABLE}],
        "qos": config.mqtt.qos,
        "cmps": cmps,
    }


class DiscoveryTracker:
    """Remembers the classes and the components still to be removed from Home Assistant.

    Not thread-safe: the publisher calls it under its own lock::

        tracker = DiscoveryTracker(config)
        tracker.set_classes(["apple", "pear"])
        tracker.set_classes(["apple"])        # the "pear" button must now be removed
        tracker.messages()  # [payload listing {"p": "button"} for pear, payload without it]
        tracker.messages()  # [payload without it]
    """

    def __init__(self, config, classes: Iterable[str] = ()):
        self._config = config
        self.classes: Tuple[str, ...] = tuple(classes)
        self._removed: Dict[str, str] = {}

    def set_classes(self, classes: Iterable[str]) -> bool:
        """Record the current classes; True when the discovery payload changes."""
        classes = tuple(classes)
        if classes == self.classes:
            return False
        before = components(self._config, self.classes)
        after = components(self._config, classes)
        for key in set(before) - set(after):
            self._removed[key] = before[key]["p"]
        for key in set(after) & set(self._removed):
            del self._removed[key]
        self.classes = classes
        return before != after

    @property
    def pending_removals(self) -> Dict[str, str]:
        return dict(self._removed)

    def messages(self) -> List[bytes]:
        """The payloads to send now, in order; pending removals are sent once, then forgotten."""
        clean = discovery_payload(self._config, self.classes)
        out = []
        if self._removed:
            out.append(discovery_payload(self._config, self.classes, self._removed))
            self._removed = {}
        out.append(clean)
        return [to_json(p) for p in out]


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON; NumPy values become plain numbers and lists."""
    return json.dumps(payload, default=_json_default, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


class Publisher:
    """What the device loop publishes through (:mod:`edge_classifier.mqtt` has the transports).

    Thread-safe; publishing never blocks on the network. While disconnected, the retained values
    (state, scores, discovery, the newest snapshot) are only remembered, and sent on every
    connect; other messages at QoS >= 1 wait in a queue of ``mqtt.max_queued`` and are sent in
    order after them. When the queue is full its *oldest* message is dropped (newer predictions
    matter more); QoS 0 messages are dropped while disconnected; ``stats["dropped"]`` counts both.

    ``stats`` keys: published, dropped, reconnects (connects after the first), connected (and
    the remembered values sent: what is published now goes out at once), callback_errors,
    rate_limited, refused (messages or subscriptions the broker refused), queued, last_error.
    """

    def __init__(self, config, clock=None, log: Optional[logging.Logger] = None):
        self.config = config
        self.topics = Topics.from_config(config)
        self._qos = config.mqtt.qos
        self._clock = clock or SYSTEM_CLOCK
        self._log = log or logging.getLogger("edge_classifier.mqtt")
        # _lock guards the fields below. A user thread never calls paho while holding it (paho
        # calls back into us while holding its own locks); paho's thread may.
        self._lock = threading.RLock()
        self._started = self._stopped = self._closed = False
        self._ready = False  # connected, and the values remembered meanwhile have been sent
        self._label: Optional[str] = None
        self._scores: Optional[bytes] = None
        self._snapshot: Optional[bytes] = None  # waiting to be sent
        self._last_prediction: Optional[float] = None
        self._queue: collections.deque = collections.deque(maxlen=config.mqtt.max_queued)
        self._discovery = DiscoveryTracker(config)
        # _status guards _stats and wakes wait_for(); a leaf lock, safe in any paho callback.
        self._status = threading.Condition(threading.Lock())
        self._stats: Dict[str, Any] = dict(
            published=0, dropped=0, reconnects=0, connected=False, callback_errors=0,
            rate_limited=0, refused=0, queued=0, last_error=None)

    # --- status -----------------------------------------------------------------------------
    @property
    def stats(self) -> Dict[str, Any]:
        with self._status:
            return dict(self._stats)

    def wait_for(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float) -> bool:
        """Block until ``predicate(stats)`` is true (True) or ``timeout`` seconds pass (False)."""
        with self._status:
            return self._status.wait_for(lambda: predicate(dict(self._stats)), timeout)

    def _update(self, **changes: Any) -> None:
        with self._status:
            for key, value in changes.items():
                self._stats[key] = value
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
        ``mqtt.prediction_interval`` ago by the clock; True when it was published."""
        body = to_json(payload)
        scores = payload.get("scores")
        scores_body = to_json(scores) if isinstance(scores, dict) else None
        now = self._clock.now()
        with self._lock:
            last = self._last_prediction
            limited = last is not None and now - last < self.config.mqtt.prediction_interval
            if not limited:
                self._last_prediction, self._scores = now, scores_body or self._scores
            ready = self._ready
        if limited:
            self._count("rate_limited")
            return False
        self._emit(self.topics.prediction, body)
        if scores_body is not None and ready:
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
