"""The configuration's keys: frozen dataclasses whose fields hold each key's default, help text
and range or choices (:func:`~edge_classifier.config.keys.key`)::

    config = Config(mqtt=MqttConfig(broker="mqtt://broker.lan"))
    config.base_topic          # -> "edge_classifier/<device_id>"

Build configs from files with :func:`~edge_classifier.config.load_config`, which also checks
the rules between keys (:mod:`edge_classifier.config.validation`).
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from typing import Optional, Tuple

from edge_classifier.config.keys import key, pin, spec_of, walk
from edge_classifier.learning.heads import HEAD_NAMES
from edge_classifier.learning.store import CLASS_CEILING

MAX_DEVICE_ID = 64


def _default_device_id() -> str:
    host = socket.gethostname().split(".")[0]
    ascii_id = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in host)
    return ascii_id.strip("_")[:MAX_DEVICE_ID] or "edge-classifier"


@dataclass(frozen=True)
class SourceConfig:
    kind: str = key("auto", choices=("auto", "picamera2", "replay", "browser"),
                    help="where frames come from: the Pi camera (picamera2), image files "
                         "(replay), the camera of a browser showing the web studio (browser; "
                         "needs web.listen), or auto: the camera if picamera2 imports, else the "
                         "replay")
    path: str = key("", help="replay: a folder of images, an image file, or several joined "
                             "with ':'")
    fps: float = key(0.0, range=(0, 1000), help="frame-rate cap; 0 = as fast as the model runs")
    loop: bool = key(True, help="replay: start again after the last image")
    width: int = key(0, range=(0, 4096), help="width of the picamera2 'lores' stream used for "
                                              "inference; 0 = the model's input size, so the "
                                              "camera's ISP crops and scales and the CPU does "
                                              "no resizing")
    height: int = key(0, range=(0, 4096), help="height of the picamera2 'lores' stream; 0 = "
                                               "the model's input size")
    crop: Tuple[float, ...] = key((), example=(0.25, 0.0, 0.75, 1.0),
                                  help="region of interest: classify only this rectangle of "
                                       "the frame, [x0, y0, x1, y1] as fractions of its width "
                                       "and height (e.g. [0.5, 0, 1, 1] is the right half); "
                                       "empty = the whole frame. Part of the state's identity: "
                                       "samples taught on one crop are not mixed with another's")
    timeout: float = key(10.0, range=(0.1, 3600),
                         help="seconds without a frame before the camera counts as hung")


@dataclass(frozen=True)
class ModelConfig:
    name: str = key("", help="the backbone, a model name from 'edge-classifier models list'; "
                             "empty = the default embedding extractor")
    threads: int = key(0, range=(0, 64), help="interpreter threads; 0 = all cores")
    resize: str = key("crop", choices=("crop", "squash"),
                      help="how a frame is fitted to the model's input: centre crop or squash")


@dataclass(frozen=True)
class HeadConfig:
    name: str = key("", choices=HEAD_NAMES + ("multilabel", ""),
                    help="the classifier trained on the embeddings; empty: the one the state "
                         "was taught with (auto for a new state); multilabel lets several "
                         "classes hold at once")
    flip: bool = key(True, help="also learn each capture's mirror image")
    crops: int = key(0, range=(0, 5), help="also learn this many zoomed crops of each capture")
    max_samples_per_class: int = key(500, range=(1, 100000),
                                     help="samples kept per class; see drop_policy")
    drop_policy: str = key("oldest", choices=("oldest", "redundant"),
                           help="when a class is full: drop the oldest sample or the most "
                                "redundant one")
    max_classes: int = key(50, range=(1, CLASS_CEILING), help="most classes a state may hold; new class "
                                                     "names beyond it are refused")


@dataclass(frozen=True)
class SmoothingConfig:
    method: str = key("consecutive", choices=("consecutive", "ema", "none"),
                      help="how predictions are steadied: N consecutive frames must agree, an "
                           "exponential moving average, or none")
    frames: int = key(3, range=(1, 1000), help="consecutive: frames that must agree")
    threshold: float = key(0.8, range=(0, 1),
                           help="below this confidence the state is 'unknown'")
    alpha: float = key(0.3, range=(0.001, 1), help="ema: weight of the newest frame")


@dataclass(frozen=True)
class ClassConfig:
    name: str = key(help="the class name (1 to 64 characters, no '/')", example="apple")
    button: Optional[int] = pin("GPIO (BCM) pin of its capture button; hold it to capture "
                                "repeatedly", example=17)
    led: Optional[int] = pin("GPIO pin of its LED: lit while the class is predicted, blinks on "
                             "a capture", example=27)


@dataclass(frozen=True)
class GpioConfig:
    pin_factory: str = key("", help="gpiozero pin factory, e.g. lgpio, or mock (no hardware); "
                                    "empty = gpiozero's default")
    delete_button: Optional[int] = pin("GPIO pin of the delete button: hold it long_press to "
                                       "delete the newest sample of the class captured last, "
                                       "very_long_press to clear that class", example=22)
    status_led: Optional[int] = pin("GPIO pin of the status LED: blinks on a capture for a "
                                    "class without an LED, shows what the delete button will "
                                    "do", example=5)
    hold_rate: float = key(5.0, range=(0.1, 100),
                           help="captures per second while a class button is held")
    bounce_time: float = key(0.05, range=(0, 5), help="seconds of button contact bounce to "
                                                      "ignore; 0 = none")
    long_press: float = key(1.0, range=(0.1, 60),
                            help="seconds the delete button is held to delete the last sample")
    very_long_press: float = key(5.0, range=(0.2, 600),
                                 help="seconds the delete button is held to clear the class; "
                                      "longer than long_press")


@dataclass(frozen=True)
class MqttConfig:
    broker: str = key("", help="mqtt://[user:pass@]host[:port] or mqtts://... (TLS); "
                               "empty = JSON lines on standard output")
    username: str = key("", help="user name at the broker (or put it in the broker URL)")
    password: str = key("", help="password at the broker; better: password_file")
    password_file: str = key("", help="read the password from this file (keeps it out of the "
                                      "config); not together with password")
    client_id: str = key("", help="MQTT client id, printable ASCII up to 128 characters; "
                                  "empty = edge-classifier-<device_id>")
    keepalive: int = key(60, range=(5, 65535),
                         help="seconds between keep-alive pings to the broker")
    qos: int = key(1, range=(0, 2), help="MQTT quality of service of what the device publishes")
    base_topic: str = key("", help="topic prefix of every message; empty = "
                                   "edge_classifier/<device_id>")
    tls_ca: str = key("", help="mqtts:// only: CA certificate file that signed the broker's "
                               "certificate; empty = the system's CAs")
    tls_cert: str = key("", help="mqtts:// only: client certificate file, for brokers that "
                                 "require one")
    tls_key: str = key("", help="mqtts:// only: the client certificate's key file (unencrypted), "
                                "if not in tls_cert")
    tls_insecure: bool = key(False, help="mqtts:// only: skip host-name verification "
                                         "(testing only)")
    prediction_interval: float = key(1.0, range=(0, 3600),
                                     help="seconds between prediction messages; the state "
                                          "topic is sent at once")
    stats_interval: float = key(60.0, range=(1, 86400), help="seconds between stats messages")
    commands: bool = key(False, help="accept remote commands on <base_topic>/cmd/<action>")
    discovery: bool = key(True, help="announce the device to Home Assistant (MQTT discovery)")
    discovery_prefix: str = key("homeassistant", help="Home Assistant's discovery topic prefix")
    max_queued: int = key(1000, range=(1, 1000000),
                          help="messages kept while the broker is away; beyond it the oldest "
                               "are dropped")
    max_payload: int = key(4096, range=(64, 1048576),
                           help="larger command payloads (bytes) are rejected")
    reconnect_min: float = key(1.0, range=(0.01, 3600),
                               help="first reconnect delay (s); it doubles up to reconnect_max")
    reconnect_max: float = key(60.0, range=(0.01, 86400),
                               help="longest reconnect delay (s); not below reconnect_min")


_tls_key = key  # WebConfig has a field called "key": its spec is made under another name


@dataclass(frozen=True)
class WebConfig:
    listen: str = key("", help="the web studio's address, [HOST:]PORT (8080, 0.0.0.0:8080, "
                               "[::1]:8080); HOST defaults to 127.0.0.1 (this machine only); "
                               "any other address needs web.password; empty = no web studio")
    auth: str = key("auto", choices=("auto", "none"),
                    help="auto: ask for web.password when one is set (listening beyond this "
                         "machine needs one); none: never ask, even on the network (anyone who "
                         "can reach the device may teach it)")
    password: str = key("", help="the web studio's password (browsers log in once; other "
                                 "clients send it as HTTP Basic or Bearer credentials); better: "
                                 "password_file")
    password_file: str = key("", help="read the web password from this file; not together "
                                      "with web.password")
    hosts: str = key("", help="host names the page may be opened by besides IP addresses and "
                              "localhost, comma-separated (e.g. \"pi.local\"); with a password "
                              "any name is accepted")
    max_upload_bytes: int = key(10 * 1024 * 1024, range=(1024, 1024 ** 3),
                                help="largest image file accepted by an upload, in bytes")
    max_upload_files: int = key(50, range=(1, 1000), help="most image files in one upload")
    max_upload_pixels: int = key(40_000_000, range=(1, 1_000_000_000),
                                 help="largest image accepted by an upload, in decoded pixels "
                                      "(width x height)")
    stream_fps: float = key(5.0, range=(0.5, 60),
                            help="frame rate cap of the live view sent to each browser; the "
                                 "bars update 5 times a second, or this often when higher")
    inbox_size: int = key(50, range=(0, 10000),
                          help="unsure frames kept in the inbox for filing into a class "
                               "(oldest dropped beyond it); 0 = no inbox")
    inbox_interval: float = key(10.0, range=(0, 86400),
                                help="seconds between two frames kept in the inbox")
    cert: str = key("", help="TLS certificate file (PEM): serve https://, which a browser's "
                             "camera needs beyond localhost")
    key: str = _tls_key("", help="the certificate's private key file (PEM, unencrypted), if "
                                 "it is not in web.cert")


@dataclass(frozen=True)
class FleetConfig:
    group: str = key("", help="devices with the same group share their classes and samples "
                              "through the MQTT broker (needs mqtt.broker and fleet.key or "
                              "fleet.key_file): ASCII letters, digits, '_' and '-', 1 to 64 "
                              "characters; empty = no fleet")
    mode: str = key("share", choices=("share", "follow", "publish"),
                    help="share: send what is taught here and receive the group's; follow: "
                         "only receive; publish: only send")
    key_file: str = key("", help="read the group's secret from this file; not together with "
                                 "fleet.key")
    thumbnail: int = key(64, range=(0, 160), help="short side in pixels of the thumbnail sent "
                                                  "with each sample; 0 = none")
    max_message: int = key(256 * 1024, range=(16 * 1024, 4 * 1024 * 1024),
                           help="larger fleet messages (bytes) are neither sent nor accepted")
    digest_interval: float = key(60.0, range=(1, 3600),
                                 help="seconds between two digests of this device's samples "
                                      "and acknowledgements (retained, about 1 KB): a "
                                      "message lost while connected is repaired within two")
    horizon_days: float = key(7.0, range=(0.01, 3650),
                              help="a device silent this long is no longer waited for before "
                                   "tombstones are compacted; back after half of it, it drops "
                                   "the samples the group no longer holds instead of sending "
                                   "them again")
    key: str = _tls_key("", help="the group's shared secret (16 to 1024 characters) that signs "
                                 "every fleet message; never logged; better: key_file")


@dataclass(frozen=True)
class Config:
    device_id: str = key(factory=_default_device_id, example="kitchen-cam",
                         help="names this device in MQTT topics and Home Assistant: ASCII "
                              "letters, digits, '_' and '-', 1 to 64 characters; default: the "
                              "host name")
    state_dir: str = key("", help="where samples and the fitted head are kept; empty = "
                                  "$EDGE_CLASSIFIER_HOME/state (the service's StateDirectory)")
    keyboard: str = key("auto", choices=("auto", "on", "off"),
                        help="whether number keys capture for class N; auto: when standard "
                             "input is a terminal")
    source: SourceConfig = key(SourceConfig(), help="Frames: the Pi camera, or a replay of "
                                                    "image files.")
    model: ModelConfig = key(ModelConfig(), help="The backbone that turns a frame into an "
                                                 "embedding.")
    head: HeadConfig = key(HeadConfig(), help="Learning: the classifier on the embeddings and "
                                              "the samples it keeps.")
    smoothing: SmoothingConfig = key(SmoothingConfig(),
                                     help="Steadying the prediction before it is published.")
    gpio: GpioConfig = key(GpioConfig(), help="Buttons and LEDs (the class pins are in "
                                              "[[classes]]).")
    mqtt: MqttConfig = key(MqttConfig(), help="Publishing: MQTT and Home Assistant discovery.")
    web: WebConfig = key(WebConfig(), help="The web studio: teach, watch and test the device "
                                           "from a browser.")
    fleet: FleetConfig = key(FleetConfig(), help="The fleet: devices of one group learn together "
                                                 "through the MQTT broker (off by default).")
    classes: Tuple[ClassConfig, ...] = key((), help="One [[classes]] table per class, in "
                                                    "order: its name, and optionally the GPIO "
                                                    "pins of its button and LED.")

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def base_topic(self) -> str:
        return self.mqtt.base_topic or f"edge_classifier/{self.device_id}"


# Choices and ranges by dotted key (classes' keys as "classes.button"), from the specs above.
_CHOICES = {k: spec_of(f).choices for k, f, _ in walk(Config) if spec_of(f).choices}
_RANGES = {k: spec_of(f).range for k, f, kind in walk(Config)
           if spec_of(f).range and kind in (int, float)}
