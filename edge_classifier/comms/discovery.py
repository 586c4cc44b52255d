"""What the device announces and where: its topics and Home Assistant device discovery.

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

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from edge_classifier import __version__

ORIGIN_NAME = "edge-classifier"
AVAILABLE, NOT_AVAILABLE = "online", "offline"




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
