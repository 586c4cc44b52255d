"""A real mosquitto broker for tests, a paho observer to watch it, and a log recorder.

::

    import pytest
    from mosquitto import Mosquitto, Observer, running_broker

    broker = pytest.fixture(running_broker, name="broker")  # anonymous, on a free port

    def test_something(broker):
        with Observer(broker, "edge_classifier/#") as seen:
            ...
            seen.wait_for("edge_classifier/dev1/availability", "online")

    secured = Mosquitto(tmp_path, users={"alice": "s3cret"},
                        acl="user alice\\ntopic readwrite edge_classifier/#\\n").start()
    secured.restart(); secured.stop()

Also: ``publisher_factory`` (a fixture body making publishers that are closed after the test),
``mqtt_config`` (a Config with test timings) and :class:`LogRecorder`. Everything waits with
:func:`waiting.wait_until` for a real event (the broker's port accepting connections; a message
arriving; a log record), its timeout only an upper bound, never for a fixed time. The tools
(``tools/soak.py``, ``tools/bench_loop.py``) start their brokers with :class:`Mosquitto` too.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from waiting import TIMEOUT, wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
HOST = "127.0.0.1"
# Topics of the device "dev1" that mqtt_config() configures.
BASE = "edge_classifier/dev1"
AVAILABILITY, STATE, PREDICTION, STATS = (f"{BASE}/availability", f"{BASE}/state",
                                          f"{BASE}/prediction", f"{BASE}/stats")
CMD, RESULT = f"{BASE}/cmd/", f"{BASE}/cmd/result"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Mosquitto:
    """A mosquitto process with its own configuration in ``folder``.

    ``users`` (name -> password) turns anonymous access off and writes a password file with
    ``mosquitto_passwd -b``; ``acl`` is the text of an ACL file; ``persistence`` keeps retained
    messages and persistent sessions across :meth:`restart`; ``tls`` is ``(certfile, keyfile)``
    or ``(certfile, keyfile, cafile)``, the last making clients present a certificate signed by
    ``cafile``. ``verbose=False`` logs connections and errors but not every message (for long
    runs: the soak).
    """

    def __init__(self, folder: Union[str, Path], port: Optional[int] = None,
                 users: Optional[Dict[str, str]] = None, acl: Optional[str] = None,
                 persistence: bool = False, tls: Optional[tuple] = None, verbose: bool = True):
        self.folder = Path(folder) / f"mosquitto-{uuid.uuid4().hex[:8]}"
        self.folder.mkdir(parents=True)
        self.port = port or free_port()
        self.users, self.acl, self.persistence, self.tls = users or {}, acl, persistence, tls
        self.verbose = verbose
        self.restarts = 0
        self.process: Optional[subprocess.Popen] = None
        self.log_path = self.folder / "mosquitto.log"
        self.config_path = self._write_config()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"

    @property
    def available(self) -> bool:
        """True when the mosquitto executable is installed."""
        return os.path.exists(MOSQUITTO)

    def _write_config(self) -> Path:
        lines = [f"listener {self.port} {HOST}",
                 f"allow_anonymous {'false' if self.users else 'true'}",
                 f"persistence {'true' if self.persistence else 'false'}",
                 f"persistence_location {self.folder}/",
                 "log_dest stdout", "connection_messages true"]
        lines += ["log_type all"] if self.verbose else \
            [f"log_type {kind}" for kind in ("error", "warning", "notice", "information")]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to a user who cannot read our files
        if self.users:
            passwd = self.folder / "passwd"
            for i, (name, password) in enumerate(self.users.items()):
                subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwd),
                                name, password], check=True, capture_output=True, timeout=30)
            passwd.chmod(0o600)
            lines.append(f"password_file {passwd}")
        if self.acl is not None:
            acl = self.folder / "acl"
            acl.write_text(self.acl)
            acl.chmod(0o600)
            lines.append(f"acl_file {acl}")
        if self.tls:
            lines += [f"certfile {self.tls[0]}", f"keyfile {self.tls[1]}"]
            if len(self.tls) > 2:
                lines += [f"cafile {self.tls[2]}", "require_certificate true"]
        path = self.folder / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = TIMEOUT) -> "Mosquitto":
        """Start the broker and return once it accepts connections."""
        if self.running:
            return self
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)],
                                            stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        process = self.process
        if not wait_until(lambda: process.poll() is not None or self._accepting(), timeout):
            self.stop()
            raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_text()}")
        if process.poll() is not None:
            self.process = None
            raise RuntimeError(f"mosquitto exited with {process.returncode}:\n"
                               f"{self.log_text()}")
        return self

    def _accepting(self) -> bool:
        try:
            socket.create_connection((HOST, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the broker (SIGTERM, so persistent data is saved) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)

    def restart(self, timeout: float = TIMEOUT) -> "Mosquitto":
        """Stop and start again on the same port (counted in :attr:`restarts`)."""
        self.stop()
        self.restarts += 1
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


class Observer:
    """A paho subscriber that records every message and lets a test wait for one.

    ``persistent=True`` keeps its session (subscriptions and queued QoS 1 messages) on the broker
    while it is disconnected, e.g. across a broker restart with ``persistence=True``.
    """

    def __init__(self, broker: Mosquitto, *topics: str, username: Optional[str] = None,
                 password: Optional[str] = None, persistent: bool = False, qos: int = 1):
        import paho.mqtt.client as paho
        self.topics, self.qos = topics, qos
        self.messages: List[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        client_id = f"observer-{uuid.uuid4().hex[:8]}"
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv311, clean_session=not persistent)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_disconnect = lambda *args: self._subscribed.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.02, 0.1)
        self.client.connect_async(HOST, broker.port, keepalive=30)
        self.client.loop_start()
        self.wait_subscribed()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure and self.topics:
            client.subscribe([(t, self.qos) for t in self.topics])
        elif not self.topics:
            self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            self.messages.append(Message(message.topic, bytes(message.payload),
                                         bool(message.retain), message.qos))
            self._cond.notify_all()

    def wait_subscribed(self, timeout: float = TIMEOUT) -> None:
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"observer not subscribed to {self.topics} within {timeout} s")

    def mark(self) -> int:
        """The number of messages so far: pass it as ``after`` to wait only for newer ones."""
        with self._cond:
            return len(self.messages)

    def wait_until(self, predicate: Callable[[List[Message]], bool],
                   timeout: float = TIMEOUT) -> List[Message]:
        """Every message so far, once ``predicate(messages)`` holds; AssertionError after
        ``timeout`` seconds without it."""
        if not wait_until(lambda: predicate(self.messages), timeout, condition=self._cond):
            with self._cond:
                raise AssertionError(f"condition not met within {timeout} s; {len(self.messages)} "
                                     f"messages, the last: {self.messages[-5:]!r}")
        with self._cond:
            return list(self.messages)

    def matching(self, topic: str, payload: Union[None, str, bytes] = None,
                 retain: Optional[bool] = None, after: int = 0) -> List[Message]:
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        with self._cond:
            return [m for m in self.messages[after:] if m.topic == topic
                    and (payload is None or m.payload == payload)
                    and (retain is None or m.retain == retain)]

    def wait_for(self, topic: str, payload: Union[None, str, bytes] = None,
                 retain: Optional[bool] = None, after: int = 0,
                 timeout: float = TIMEOUT) -> Message:
        """The first message on ``topic`` (with that payload and retain flag, if given) at
        index ``after`` or later, waiting up to ``timeout`` seconds for it."""
        self.wait_until(lambda _: bool(self.matching(topic, payload, retain, after)), timeout)
        return self.matching(topic, payload, retain, after)[0]

    def publish(self, topic: str, payload: Union[str, bytes], qos: int = 1,
                retain: bool = False) -> None:
        """Publish and wait until the broker has it."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> "Observer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class LogRecorder(logging.Handler):
    """Records every log record of ``logger`` (DEBUG and up) and lets a test wait for one."""

    def __init__(self, logger: str = "edge_classifier"):
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []
        self._cond = threading.Condition()
        self._logger = logging.getLogger(logger)
        self._old_level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            record.rendered = self.format(record)
            self.records.append(record)
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(r.rendered for r in self.records)

    def wait_for(self, fragment: str, level: int = logging.DEBUG, timeout: float = TIMEOUT,
                 count: int = 1) -> logging.LogRecord:
        """The ``count``-th record at ``level`` or above whose message contains ``fragment``."""
        def found():
            return [r for r in self.records if fragment in r.getMessage() and r.levelno >= level]
        if not wait_until(lambda: len(found()) >= count, timeout, condition=self._cond):
            with self._cond:
                raise AssertionError(f"not {count} log records with {fragment!r} within "
                                     f"{timeout} s:\n"
                                     + "\n".join(r.getMessage() for r in self.records))
        with self._cond:
            return found()[count - 1]

    def __enter__(self) -> "LogRecorder":
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self._logger.addHandler(self)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc_info) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._old_level)


def mqtt_config(server: Optional[Mosquitto] = None, device_id: str = "dev1", **mqtt):
    """A :class:`Config` for ``device_id`` talking to ``server`` (None: no broker), with test
    timings (keepalive 5 s, reconnect back-off 0.05..0.2 s, no prediction rate limit) unless
    overridden by ``mqtt`` keyword arguments (:class:`MqttConfig` fields)."""
    from edge_classifier.config import Config, MqttConfig
    fields = dict(broker=server.url if server else "", keepalive=5, reconnect_min=0.05,
                  reconnect_max=0.2, prediction_interval=0.0)
    fields.update(mqtt)
    return Config(device_id=device_id, mqtt=MqttConfig(**fields))


def running_broker(tmp_path):
    """Fixture body: an anonymous mosquitto on a free port, stopped after the test. Use it as
    ``broker = pytest.fixture(running_broker, name="broker")`` in a test module."""
    with Mosquitto(tmp_path) as running:
        yield running


def publisher_factory():
    """Fixture body: ``make(config, on_event=None, **kwargs)`` gives publishers from
    ``make_publisher`` (events ignored unless ``on_event`` is given), all closed after the
    test. Use it as ``publishers = pytest.fixture(publisher_factory, name="publishers")``."""
    from edge_classifier.comms.mqtt import make_publisher
    made = []

    def make(config, on_event=None, **kwargs):
        publisher = make_publisher(config, on_event or (lambda event: None), **kwargs)
        made.append(publisher)
        return publisher
    yield make
    for publisher in made:
        publisher.close()
