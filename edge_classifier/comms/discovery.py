"""What the device announces and where: its topics and Home Assistant device discovery.

Home Assistant device-based discovery: one retained message describes the whole device.

::

    payload = discovery_payload(config, ["apple", "banana"])
    topic = Topics.from_config(config).discovery   # homeassistant/device/<device_id>/config

The payload (keys as in Home Assistant's MQTT discovery code: ``homeassistant/components/mqtt/``
``schemas.py`` and ``abbreviations.py``)::

    {"dev": {"ids": ["edge_classifier_<device_id>"], "name": ..., "mf": ..., "mdl": ..., "sw": ...},
     "o": {"name": "edge-classifier", "sw": "<version>", "support_url": SUPPORT_URL},
     "availability": [{"topic": "<base>/availability", ...}],
     "qos": <mqtt.qos>,
     "cmps": {"label": {"p": "sensor", "state_topic": "<base>/state",
                        "json_attributes_topic": "<base>/scores",
                        "json_attributes_template": "{{ {'scores': value_json} | to_json }}",
                        "qos": <mqtt.qos>, ...},
              "confidence": {"p": "sensor", "state_topic": "<base>/prediction",
                             "value_template": "{{ ... value_json.confidence ... }}", ...},
              "snapshot": {"p": "camera", "topic": "<base>/snapshot", ...},
              # with mqtt.commands only:
              "take_snapshot": {"p": "button", "command_topic": "<base>/cmd/snapshot", ...},
              "capture_apple_<hash>": {"p": "button", "command_topic": "<base>/cmd/capture",
                                       "payload_press": "{\\"class\\": \\"apple\\"}", ...}}}

Every component repeats ``qos``: Home Assistant only passes availability, state and command
topics from the device on to its components, so without it they subscribe at QoS 0. The label's
attributes are ``{"scores": {class: p}}``: one attribute, so no class name can collide with an
attribute name Home Assistant reserves (``state``, ``icon``, ``friendly_name``, ...). Every
``unique_id`` starts with ``edge_classifier_<device_id>_``.

Bounded: at most ``max_buttons`` capture buttons (``head.max_classes`` once the config has it,
else :data:`DEFAULT_MAX_BUTTONS`, or what the caller passes) and at most
:data:`MAX_DISCOVERY_BYTES` of JSON; classes beyond them get no button, and adding them sends
nothing.

Component keys and unique ids are derived from the device id and the class name only, so they are
the same after every restart. A component that disappears (a class deleted or renamed, or pushed
out by the cap) is removed the way Home Assistant documents it: one update lists it with only its
platform (``{"p": "button"}``), then a second update leaves it out (:class:`DiscoveryTracker`).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from edge_classifier import __version__

ORIGIN_NAME = "edge-classifier"
PROJECT = "edge_classifier"  # prefix of the device identifier and of every unique_id
# Where Home Assistant's MQTT logs send users with questions about our discovery payloads.
SUPPORT_URL = "https://pypi.org/project/edge-classifier/"
AVAILABLE, NOT_AVAILABLE = "online", "offline"
DEFAULT_MAX_BUTTONS = 50  # capture buttons, until the config has head.max_classes
MAX_DISCOVERY_BYTES = 64 * 1024  # one discovery message, as JSON (removals come on top)
SCORES_ATTRIBUTES_TEMPLATE = "{{ {'scores': value_json} | to_json }}"


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


def _fixed_components(config) -> Dict[str, Dict[str, Any]]:
    topics, uid, qos = Topics.from_config(config), _unique_prefix(config), config.mqtt.qos
    cmps: Dict[str, Dict[str, Any]] = {
        # The scores go under one "scores" attribute: a class named like an attribute Home
        # Assistant reserves ("state", "icon", "friendly_name", ...) would lose its score if
        # each class were an attribute of its own.
        "label": {"p": "sensor", "name": "Label", "unique_id": f"{uid}_label",
                  "state_topic": topics.state, "json_attributes_topic": topics.scores,
                  "json_attributes_template": SCORES_ATTRIBUTES_TEMPLATE,
                  "icon": "mdi:label-outline", "qos": qos},
        "confidence": {"p": "sensor", "name": "Confidence", "unique_id": f"{uid}_confidence",
                       "state_topic": topics.prediction,
                       "value_template": "{{ (value_json.confidence * 100) | round(1) }}",
                       "unit_of_measurement": "%", "state_class": "measurement",
                       "icon": "mdi:percent", "qos": qos},
        "snapshot": {"p": "camera", "name": "Snapshot", "unique_id": f"{uid}_snapshot",
                     "topic": topics.snapshot, "qos": qos},
    }
    if config.mqtt.commands:
        cmps["take_snapshot"] = {
            "p": "button", "name": "Take snapshot", "unique_id": f"{uid}_take_snapshot",
            "command_topic": topics.command_prefix + "snapshot", "payload_press": "{}",
            "icon": "mdi:camera", "qos": qos}
    return cmps


def _unique_prefix(config) -> str:
    return f"{PROJECT}_{config.device_id}"


def capture_button(config, class_name: str) -> Dict[str, Any]:
    """The capture button component of one class."""
    topics = Topics.from_config(config)
    return {"p": "button", "name": f"Capture {class_name}",
            "unique_id": f"{_unique_prefix(config)}_{component_key(class_name)}",
            "command_topic": topics.command_prefix + "capture",
            "payload_press": json.dumps({"class": class_name}, ensure_ascii=False),
            "icon": "mdi:camera-plus", "qos": config.mqtt.qos}


def max_buttons_for(config, max_buttons: Optional[int] = None) -> int:
    """``max_buttons``, else ``config.head.max_classes`` when the config has it, else
    :data:`DEFAULT_MAX_BUTTONS`."""
    if max_buttons is None:
        max_buttons = getattr(getattr(config, "head", None), "max_classes", DEFAULT_MAX_BUTTONS)
    return max(0, int(max_buttons))


def components(config, classes: Sequence[str],
               max_buttons: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
    """The component configurations (``cmps``) for the device, keyed by stable component key.

    With ``mqtt.commands``, the first ``max_buttons`` classes (see :func:`max_buttons_for`) get
    a capture button each, as many as keep the payload within :data:`MAX_DISCOVERY_BYTES`.
    """
    cmps = _fixed_components(config)
    if not config.mqtt.commands:
        return cmps
    size = len(to_json(_envelope(config, cmps)))
    for name in list(dict.fromkeys(classes))[:max_buttons_for(config, max_buttons)]:
        key, button = component_key(name), capture_button(config, name)
        size += len(to_json({key: button})) - 1  # its "key":{...} and a comma
        if size > MAX_DISCOVERY_BYTES:
            break
        cmps[key] = button
    return cmps


def _envelope(config, cmps: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    topics = Topics.from_config(config)
    return {
        "dev": {"ids": [f"{PROJECT}_{config.device_id}"], "name": config.device_id,
                "mf": "edge-classifier", "mdl": "Teachable camera classifier",
                "sw": __version__},
        "o": {"name": ORIGIN_NAME, "sw": __version__, "support_url": SUPPORT_URL},
        "availability": [{"topic": topics.availability, "payload_available": AVAILABLE,
                          "payload_not_available": NOT_AVAILABLE}],
        # Home Assistant before 2026.5.2 does not pass the device's qos on to its components:
        # each component says it too.
        "qos": config.mqtt.qos,
        "cmps": cmps,
    }


def discovery_payload(config, classes: Sequence[str],
                      removed: Optional[Mapping[str, str]] = None,
                      max_buttons: Optional[int] = None) -> Dict[str, Any]:
    """The device discovery payload for ``classes`` (at most :data:`MAX_DISCOVERY_BYTES` as
    JSON, plus the removals).

    ``removed`` maps component keys to their platform; each is listed as ``{"p": platform}``, which
    tells Home Assistant to remove that component (send the payload without it afterwards).
    """
    cmps = components(config, classes, max_buttons)
    for key, platform in (removed or {}).items():
        if key not in cmps:
            cmps[key] = {"p": platform}
    return _envelope(config, cmps)


class DiscoveryTracker:
    """Remembers the classes and which components Home Assistant was told about, so that a
    component that disappears (a class deleted or renamed, or pushed past the button cap) is
    removed: the next update lists it with only its platform, the one after leaves it out.

    The classes given to the constructor count as announced (Home Assistant may know them from
    the retained payload). Removals are bounded by what was announced, so they stay bounded
    however many classes come and go. Not thread-safe: the publisher calls it under its lock::

        tracker = DiscoveryTracker(config, ["apple", "pear"])
        tracker.set_classes(["apple"])        # the "pear" button must now be removed
        tracker.messages()  # [payload listing {"p": "button"} for pear, payload without it]
        tracker.messages()  # [payload without it]
    """

    def __init__(self, config, classes: Iterable[str] = (), max_buttons: Optional[int] = None):
        self._config = config
        self.max_buttons = max_buttons_for(config, max_buttons)
        self.classes: Tuple[str, ...] = tuple(classes)
        self._current = components(config, self.classes, self.max_buttons)
        self._announced: Dict[str, str] = {key: c["p"] for key, c in self._current.items()}

    def set_classes(self, classes: Iterable[str]) -> bool:
        """Record the current classes; True when the discovery payload changes."""
        classes = tuple(classes)
        if classes == self.classes:
            return False
        after = components(self._config, classes, self.max_buttons)
        changed, self._current, self.classes = after != self._current, after, classes
        return changed

    @property
    def without_button(self) -> int:
        """How many classes got no capture button (the cap, or the payload's size)."""
        if not self._config.mqtt.commands:
            return 0
        buttons = sum(1 for key in self._current if key.startswith("capture_"))
        return len(set(self.classes)) - buttons

    @property
    def pending_removals(self) -> Dict[str, str]:
        return {key: platform for key, platform in self._announced.items()
                if key not in self._current}

    def messages(self) -> List[bytes]:
        """The payloads to send now, in order; pending removals are sent once, then forgotten."""
        removed = self.pending_removals
        out = [discovery_payload(self._config, self.classes, removed, self.max_buttons)
               ] if removed else []
        out.append(_envelope(self._config, self._current))
        self._announced = {key: c["p"] for key, c in self._current.items()}
        return [to_json(p) for p in out]


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON; NumPy values become plain numbers and lists."""
    return json.dumps(payload, default=_json_default, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")
