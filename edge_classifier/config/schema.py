"""Configuration: TOML in, frozen dataclasses out.

Unknown keys and bad values are rejected with the key's dotted name, so a typo never passes
silently::

    config = load_config("/etc/edge-classifier/config.toml")
    config.mqtt.broker, config.smoothing.frames

``edge-classifier config --example`` prints a commented file with every key
(:func:`example_text`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Tuple, get_type_hints

from edge_classifier.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PATH = "/etc/edge-classifier/config.toml"


def _default_device_id() -> str:
    host = socket.gethostname().split(".")[0] or "edge-classifier"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in host)[:64]


@dataclass(frozen=True)
class SourceConfig:
    kind: str = "auto"  # "picamera2", "replay" or "auto" (picamera2 if it imports, else replay)
    path: str = ""  # replay: a folder, an image file, or several separated by ':'
    fps: float = 0.0  # frame-rate cap; 0 = as fast as possible
    loop: bool = True  # replay: start again at the end
    width: int = 320  # picamera2 lores stream size
    height: int = 240
    timeout: float = 10.0  # seconds without a frame before the camera counts as hung


@dataclass(frozen=True)
class ModelConfig:
    name: str = ""  # empty: the manifest's default embedding extractor
    threads: int = 0  # 0: all cores
    resize: str = "crop"


@dataclass(frozen=True)
class HeadConfig:
    name: str = "auto"
    flip: bool = True  # augmentation at capture time
    crops: int = 0
    max_samples_per_class: int = 500
    drop_policy: str = "oldest"  # when a class is full: "oldest" or "redundant"


@dataclass(frozen=True)
class SmoothingConfig:
    method: str = "consecutive"  # "consecutive", "ema" or "none"
    frames: int = 3  # consecutive: frames that must agree
    threshold: float = 0.8  # below it the state is "unknown"
    alpha: float = 0.3  # ema: weight of the newest frame


@dataclass(frozen=True)
class ClassConfig:
    name: str
    button: Optional[int] = None  # GPIO (BCM) pin of its capture button
    led: Optional[int] = None  # GPIO pin of its LED


@dataclass(frozen=True)
class GpioConfig:
    pin_factory: str = ""  # gpiozero pin factory ("mock" in tests); empty = gpiozero's default
    delete_button: Optional[int] = None  # hold 1 s: delete last sample; 5 s: clear the class
    status_led: Optional[int] = None
    hold_rate: float = 5.0  # captures per second while a class button is held
    bounce_time: float = 0.05
    long_press: float = 1.0
    very_long_press: float = 5.0


@dataclass(frozen=True)
class MqttConfig:
    broker: str = ""  # mqtt://[user:pass@]host[:port] or mqtts://...; empty: JSON lines on stdout
    username: str = ""
    password: str = ""
    password_file: str = ""  # read the password from a file (keeps it out of the config)
    client_id: str = ""  # empty: edge-classifier-<device_id>
    keepalive: int = 60
    qos: int = 1
    base_topic: str = ""  # empty: edge_classifier/<device_id>
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_insecure: bool = False  # skip host-name verification (testing only)
    prediction_interval: float = 1.0  # at most one prediction message per interval (s)
    stats_interval: float = 60.0
    commands: bool = False  # accept remote commands on <base>/cmd/<action>
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    max_queued: int = 1000  # QoS 1 messages kept while the broker is away; oldest dropped
    max_payload: int = 4096  # larger command payloads are rejected
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0


@dataclass(frozen=True)
class Config:
    device_id: str = field(default_factory=_default_device_id)
    state_dir: str = ""  # empty: <data home>/state
    keyboard: str = "auto"  # "auto" (when stdin is a terminal), "on" or "off"
    source: SourceConfig = SourceConfig()
    model: ModelConfig = ModelConfig()
    head: HeadConfig = HeadConfig()
    smoothing: SmoothingConfig = SmoothingConfig()
    gpio: GpioConfig = GpioConfig()
    mqtt: MqttConfig = MqttConfig()
    classes: Tuple[ClassConfig, ...] = ()

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def base_topic(self) -> str:
        return self.mqtt.base_topic or f"edge_classifier/{self.device_id}"


_CHOICES = {
    "source.kind": ("auto", "picamera2", "replay"),
    "model.resize": ("crop", "squash"),
    "head.drop_policy": ("oldest", "redundant"),
    "smoothing.method": ("consecutive", "ema", "none"),
    "keyboard": ("auto", "on", "off"),
}
_RANGES = {
    "source.fps": (0, 1000), "source.width": (16, 4096), "source.height": (16, 4096),
    "source.timeout": (0.1, 3600), "model.threads": (0, 64), "head.crops": (0, 5),
    "head.max_samples_per_class": (1, 100000), "smoothing.frames": (1, 1000),
    "smoothing.threshold": (0, 1), "smoothing.alpha": (0.001, 1), "gpio.hold_rate": (0.1, 100),
    "gpio.bounce_time": (0, 5), "gpio.long_press": (0.1, 60), "gpio.very_long_press": (0.2, 600),
    "mqtt.keepalive": (5, 65535), "mqtt.qos": (0, 2), "mqtt.prediction_interval": (0, 3600),
    "mqtt.stats_interval": (1, 86400), "mqtt.max_queued": (1, 1000000),
    "mqtt.max_payload": (64, 1048576), "mqtt.reconnect_min": (0.01, 3600),
    "mqtt.reconnect_max": (0.01, 86400),
}


def _check_value(key: str, value: Any, kind: Any) -> Any:
    optional = kind == Optional[int]
    if optional:
        if value is None or value == "":
            return None
        kind = int
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # a whole number too large for a float
            raise ConfigError(f"{key}: too large ({len(str(value))} digits)") from None
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected text, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{key}: must be one of {', '.join(_CHOICES[key])}, not {value!r}")
    if key in _RANGES and value is not None:
        lo, hi = _RANGES[key]
        if not lo <= value <= hi:
            raise ConfigError(f"{key}: must be between {lo} and {hi}, not {value!r}")
    if optional and value is not None and not 0 <= value <= 63:
        raise ConfigError(f"{key}: GPIO pin must be between 0 and 63, not {value!r}")
    return value


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(f"unknown key {prefix + '.' if prefix else ''}{unknown[0]} in {where}; "
                          f"known keys: {', '.join(sorted(known))}")
    values = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{prefix}.{f.name}: required")
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        kind = hints[f.name]
        raw = data[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = _build(kind, raw, key)
        elif f.name == "classes":
            if not isinstance(raw, list):
                raise ConfigError("classes: expected [[classes]] tables")
            values[f.name] = tuple(_build(ClassConfig, c, f"classes[{i}]")
                                   for i, c in enumerate(raw))
        else:
            values[f.name] = _check_value(key, raw, kind)
    return cls(**values)


def _validate(config: Config) -> Config:
    from edge_classifier.core.names import validate_class_name
    seen, pins = set(), {}
    for i, c in enumerate(config.classes):
        try:
            validate_class_name(c.name)
        except ValueError as exc:
            raise ConfigError(f"classes[{i}].name: {exc}") from None
        if c.name in seen:
            raise ConfigError(f"classes[{i}].name: {c.name!r} is listed twice")
        seen.add(c.name)
        for what in ("button", "led"):
            pin = getattr(c, what)
            if pin is not None:
                _check_value(f"classes[{i}].{what}", pin, Optional[int])
                if pin in pins:
                    raise ConfigError(f"classes[{i}].{what}: GPIO {pin} is already used by "
                                      f"{pins[pin]}")
                pins[pin] = f"classes[{i}].{what}"
    for what in ("delete_button", "status_led"):
        pin = getattr(config.gpio, what)
        if pin is not None and pin in pins:
            raise ConfigError(f"gpio.{what}: GPIO {pin} is already used by {pins[pin]}")
    if config.gpio.very_long_press <= config.gpio.long_press:
        raise ConfigError("gpio.very_long_press: must be longer than gpio.long_press")
    if config.mqtt.reconnect_max < config.mqtt.reconnect_min:
        raise ConfigError("mqtt.reconnect_max: must not be below mqtt.reconnect_min")
    if not config.device_id or not all(ch.isalnum() or ch in "-_" for ch in config.device_id):
        raise ConfigError(f"device_id: use letters, digits, '-' and '_' only, not "
                          f"{config.device_id!r}")
    if config.mqtt.broker:
        from edge_classifier.comms.mqtt import parse_broker_url
        try:
            parse_broker_url(config.mqtt.broker)
        except ValueError as exc:
            raise ConfigError(f"mqtt.broker: {exc}") from None
    for key in ("base_topic", "discovery_prefix"):
        topic = getattr(config.mqtt, key)
        if any(ch in topic for ch in "#+\0") or topic.startswith("/") or topic.endswith("/"):
            raise ConfigError(f"mqtt.{key}: {topic!r} is not a valid topic prefix")
    return config


def parse_config(text: str, source: str = "config") -> Config:
    """Parse TOML text into a validated :class:`Config`."""
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, a huge integer, deep nesting
        reason = exc if isinstance(exc, ValueError) else "nested too deeply"
        raise ConfigError(f"{source}: not valid TOML ({reason})") from None
    try:
        return _validate(_build(Config, data, ""))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def example_text() -> str:
    """The commented example configuration (every key, with its default)."""
    from pathlib import Path
    return (Path(__file__).with_name("example.toml")).read_text("utf-8")


def load_config(path: Optional[str] = None) -> Config:
    """Read ``path``; with None, the default file if it exists, else the defaults."""
    if path is None:
        if not os.path.exists(DEFAULT_PATH):
            return _validate(Config())
        path = DEFAULT_PATH
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    return parse_config(text, path)
