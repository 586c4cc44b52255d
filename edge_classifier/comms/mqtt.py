"""Publishing over MQTT (paho-mqtt 2.x), or as JSON lines on standard output without a broker.

::

    with make_publisher(config, on_event=queue.put) as publisher:   # start() ... close()
        publisher.set_classes(["apple", "pear"])      # Home Assistant discovery
        publisher.publish_state("apple")              # retained, only when it changes
        publisher.publish_prediction({"label": "apple", "confidence": 0.93, ...})

Topics under ``config.base_topic``: ``availability`` (retained ``online``/``offline``, also the
last will), ``state`` (retained label), ``prediction`` (rate-limited JSON), ``scores`` (retained
``{class: p}``), ``stats``, ``snapshot`` (retained JPEG), ``cmd/<action>`` (commands in) and
``cmd/result``. What waits while the broker is away, and what is dropped:
:class:`~edge_classifier.comms.publisher.Publisher`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from edge_classifier.comms.commands import error_result, handle_command
from edge_classifier.comms.discovery import AVAILABLE, NOT_AVAILABLE
from edge_classifier.comms.mqtt_health import ClientIdWatch, ThreadDeaths, shorten
from edge_classifier.comms.paho_client import describe_connect_error, discard, load_paho
from edge_classifier.comms.publisher import Publisher, StdoutPublisher
from edge_classifier.config.broker import BrokerUrl, parse_broker_url, read_password_file, redact
from edge_classifier.errors import (BrokerUrlError, CommandQueueError, MqttError, MqttFatalError,
                                     PublisherClosedError)

__all__ = ["BrokerUrl", "BrokerUrlError", "MqttError", "MqttFatalError", "MqttPublisher",
           "Publisher", "PublisherClosedError", "StdoutPublisher", "make_publisher",
           "parse_broker_url", "redact"]

STOP_TIMEOUT = 3.0  # seconds stop() waits for the broker to acknowledge "offline"
_AUTH_HINT = " (check mqtt.username and the password, and the broker's users)"


class MqttPublisher(Publisher):
    """Publishes to a broker with paho-mqtt 2.x over MQTT 5 (so the broker says which messages
    its ACL refused), with ``connect_async`` + ``loop_start``: nothing here waits for the network.

    paho reconnects with exponential back-off from ``mqtt.reconnect_min`` to ``reconnect_max``;
    each failure is logged with its reason (never a password) and kept in ``stats["last_error"]``.
    On every connect ``online`` goes first; once the broker has acknowledged it and the
    subscriptions (by then paho has re-sent what it kept from the previous connection), the
    discovery payload, the current state and scores and the queue follow.

    Two faults paho does not handle (:mod:`~edge_classifier.comms.mqtt_health` judges them):

    * paho's network thread can die (an exception outside our callbacks, e.g. ``struct.error``
      for a client id, user name, password or will topic longer than 65,535 bytes): a new
      client is built after a back-off (``stats["network_restarts"]``, one log line). If it
      dies again with the same error before connecting, MQTT is off for good: :attr:`failed`
      becomes true and :attr:`fatal_error` says why; the device loop should then exit non-zero
      (``raise_if_failed()``). Reading :attr:`failed` also notices a thread that ended unseen.
    * another client with the same client id: the broker keeps closing one connection for the
      other. It is logged once as an error naming the client id and what to change, counted in
      ``stats["client_id_conflicts"]``, and the reconnect back-off grows (``stats["backoff"]``)
      until a connection holds again.
    """

    name = "mqtt"

    def __init__(self, config, on_event: Callable[[Any], Any], clock=None,
                 log: Optional[logging.Logger] = None, max_buttons: Optional[int] = None):
        super().__init__(config, clock=clock, log=log, max_buttons=max_buttons)
        m = config.mqtt
        self.url = parse_broker_url(m.broker)
        if m.commands and not callable(on_event):
            raise TypeError("mqtt.commands is on: on_event must be a callable taking an event")
        self._on_event = on_event
        self._awaiting: set = set()  # ("pub"|"sub", mid) acknowledgements before going live
        self._link_up = False
        self._mid_topics: Dict[int, str] = {}  # mid -> topic, to name refused messages
        self._early_refusals: Dict[int, str] = {}  # refused before _transmit recorded the mid
        self._sub_topics: Dict[int, Tuple[str, ...]] = {}
        self._last_failure: Optional[str] = None
        self._ever_connected = False  # reconnects count the connects after the first
        self._paho_error: Optional[str] = None  # paho's last error message, e.g. a TLS alert
        self._connack_refused = False
        paho, self._client_class = load_paho()
        self._paho = paho
        self.client_id = m.client_id or f"edge-classifier-{config.device_id}"
        username = m.username or self.url.username
        password = (read_password_file(m.password_file) if m.password_file
                    else m.password or self.url.password)
        self._credentials = (username, password or None)
        self._paho_log = logging.getLogger(self._log.name + ".paho")
        self._watch = ClientIdWatch(self.client_id, m.reconnect_min, m.reconnect_max)
        self._deaths = ThreadDeaths(m.reconnect_min, m.reconnect_max)
        self._rebuild_timer: Optional[threading.Timer] = None
        self._lifecycle = threading.Lock()  # start/stop/rebuild, one at a time; never in paho
        self._client = self._new_client()

    def _new_client(self):
        """A paho client with our settings and callbacks (also when rebuilding one)."""
        m, paho = self.config.mqtt, self._paho
        client = self._client_class(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                    protocol=paho.MQTTv5)
        username, password = self._credentials
        if username:
            client.username_pw_set(username, password)
        self._configure_tls(client, m)
        client.will_set(self.topics.availability, NOT_AVAILABLE, qos=1, retain=True)
        client.reconnect_delay_set(self._watch.backoff, max(self._watch.backoff, m.reconnect_max))
        for name in ("connect", "connect_fail", "disconnect", "publish", "subscribe", "message",
                     "log"):
            setattr(client, f"on_{name}", self._guard(getattr(self, f"_on_{name}")))
        client.on_network_exit = self._network_exited
        return client

    def _configure_tls(self, client, m) -> None:
        if not self.url.tls:  # the config checked the TLS options at load
            return
        client.tls_set(ca_certs=m.tls_ca or None, certfile=m.tls_cert or None,
                       keyfile=m.tls_key or None)
        if m.tls_insecure:
            client.tls_insecure_set(True)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "MqttPublisher":
        """Connect in the background (returns at once); paho keeps reconnecting."""
        with self._lifecycle:
            if self._begin():
                self._log.info("MQTT: connecting to %s as %s", self.url, shorten(self.client_id))
                self._connect(self._client)
        return self

    def _connect(self, client) -> None:
        client.connect_async(self.url.host, self.url.port, self.config.mqtt.keepalive)
        client.loop_start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Publish ``offline`` (retained; waits up to ``timeout`` s for the broker's
        acknowledgement when connected) and disconnect cleanly, so no last will is sent."""
        with self._lifecycle:
            if not self._end():
                return
            client, timer = self._client, self._rebuild_timer
            if timer is not None:
                timer.cancel()
            if not self._network_alive(client):  # nothing would read the acknowledgement
                discard(client)
                self._update(connected=False)
                self._log.info("MQTT: stopped (the network thread had ended)")
                return
            if client.is_connected():
                info = client.publish(self.topics.availability, NOT_AVAILABLE, qos=1,
                                      retain=True)
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError):  # not queued: the connection just went
                    pass
            client.disconnect()
            client.loop_stop()
        self._update(connected=False)
        self._log.info("MQTT: disconnected from %s", self.url)

    # --- paho's network thread dying ----------------------------------------------------------
    @property
    def failed(self) -> bool:
        """True once MQTT is off for good (:attr:`fatal_error` says why). Also notices a network
        thread that ended without telling us, and handles it like one that died."""
        client = self._client
        if (self._fatal_error is None and self._started and not self._stopped
                and client.network_thread is not None and not self._network_alive(client)):
            self._network_exited(client, None)
        return self._fatal_error is not None

    @staticmethod
    def _network_alive(client) -> bool:
        thread = client.network_thread
        return thread is None or thread.is_alive() or thread is threading.current_thread()

    def _network_exited(self, client, error: Optional[BaseException]) -> None:
        """paho's network thread of ``client`` ended (on that thread, or from :attr:`failed`)."""
        with self._lock:
            if (client is not self._client or self._stopped or self._fatal_error is not None
                    or getattr(client, "exit_seen", False)):
                return  # a clean stop, or already handled
            client.exit_seen = True
            self._ready, self._awaiting, self._link_up = False, set(), False
            plan = self._deaths.died(error)
            if plan.fatal:
                self._fatal_error = plan.message
            else:
                self._rebuild_timer = timer = threading.Timer(plan.delay, self._rebuild)
                timer.daemon = True
                timer.start()
        self._report(logging.ERROR, "MQTT: %s", redact(plan.message), connected=False,
                     last_error=plan.message, fatal_error=self._fatal_error)

    def _rebuild(self) -> None:
        """Replace the client whose network thread died and connect again (timer thread)."""
        with self._lifecycle:
            with self._lock:
                if self._stopped or self._fatal_error is not None:
                    return
                old = self._client
            try:
                new = self._new_client()
            except Exception as exc:  # e.g. the TLS files are gone
                with self._lock:
                    self._fatal_error = f"cannot build a new MQTT client: {exc}"
                self._report(logging.ERROR, "MQTT: %s; MQTT is off", self._fatal_error,
                             fatal_error=self._fatal_error, last_error=self._fatal_error)
                return
            with self._lock:
                self._client = new
            discard(old)
            self._count("network_restarts")
            self._log.info("MQTT: connecting to %s again with a new client", self.url)
            self._connect(new)

    # --- sending ------------------------------------------------------------------------------
    def _transmit(self, topic: str, body: bytes, qos: int, retain: bool):
        try:
            info = self._client.publish(topic, body, qos=qos, retain=retain)
        except ValueError as exc:  # an invalid topic: a bug, not the network
            self._log.error("MQTT: cannot publish on %r: %s", topic, exc)
            self._count("dropped")
            return None
        lost = info.rc != self._paho.MQTT_ERR_SUCCESS and not (
            qos > 0 and info.rc == self._paho.MQTT_ERR_NO_CONN)  # paho re-sends those
        self._count("dropped" if lost else "published")
        if qos > 0 and not lost:
            with self._status:
                refusal = self._early_refusals.pop(info.mid, None)
                if refusal is None:
                    self._mid_topics[info.mid] = topic
            if refusal is not None:
                self._refused(f"message on {topic!r}", refusal)
        return info

    def _refused(self, what: str, reason: str) -> None:
        self._count("refused")
        self._log.error("MQTT: the broker refused the %s: %s (check the broker's ACL for this "
                        "user)", what, reason)

    def _resend_discovery(self) -> None:
        with self._lock:
            for body in self._discovery.messages() if self._ready else []:
                self._transmit(self.topics.discovery, body, self._qos, True)

    # --- paho callbacks (paho's thread); _guard keeps exceptions away from paho ---------------
    def _guard(self, callback: Callable) -> Callable:
        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:  # an exception would end paho's network thread
                self._callback_failed(callback.__name__, exc)
        return guarded

    def _callback_failed(self, where: str, exc: BaseException) -> None:
        self._count("callback_errors")
        self._log.error("MQTT: error in %s: %s: %s", where.strip("_"), type(exc).__name__,
                        redact(str(exc)), exc_info=exc)

    def _failed(self, message: str) -> None:
        level = logging.DEBUG if message == self._last_failure else logging.ERROR
        self._last_failure = message
        self._report(level, "MQTT: %s; retrying (back-off up to %g s)", message,
                     self.config.mqtt.reconnect_max, last_error=message, connected=False)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            hint = _AUTH_HINT if reason_code.value in (134, 135) else ""
            self._connack_refused = True
            self._failed(f"{self.url} refused the connection: {reason_code}{hint}")
            return
        first, self._ever_connected = not self._ever_connected, True
        self._last_failure, self._link_up, self._paho_error = None, True, None
        self._watch.connected(self._clock.now())
        with self._lock:
            self._deaths.connected()
        self._update(last_error=None)
        self._count("reconnects", 0 if first else 1)
        self._log.info("MQTT: connected to %s", self.url)
        # "online" first; _on_ready sends the rest once it and the subscriptions are acknowledged
        info = self._transmit(self.topics.availability, AVAILABLE.encode(), 1, True)
        self._awaiting = {("pub", info.mid)} if info is not None else set()
        opts = self._paho.SubscribeOptions
        subs = []
        if self.config.mqtt.commands:
            subs.append((self.topics.command_prefix + "+", opts(qos=self._qos, noLocal=True)))
        if self.config.mqtt.discovery:
            subs.append((self.topics.ha_status, opts(qos=self._qos)))
        if subs:
            _, mid = client.subscribe(subs)
            self._sub_topics[mid] = tuple(topic for topic, _ in subs)
            self._awaiting.add(("sub", mid))
        if not self._awaiting:
            self._on_ready()

    def _acknowledged(self, kind: str, mid: int) -> None:
        if (kind, mid) in self._awaiting:
            self._awaiting.discard((kind, mid))
            if not self._awaiting:
                self._on_ready()

    def _on_connect_fail(self, client, userdata) -> None:
        why = describe_connect_error(client.connect_error)
        self._failed(f"cannot connect to {self.url}: {why}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._ready, self._awaiting = False, set()  # plain stores: no lock in this callback
        was_connected, self._link_up = self._link_up, False
        refused, self._connack_refused = self._connack_refused, False
        self._update(connected=False)
        if self._stopped or refused:
            return
        if was_connected:
            self._judge_lost_connection(client, reason_code)
        else:  # closed before CONNACK, e.g. a TLS 1.3 alert for a missing client certificate
            detail, self._paho_error = self._paho_error or str(reason_code), None
            self._failed(f"{self.url} closed the connection before accepting it "
                         f"({redact(detail)})")

    def _judge_lost_connection(self, client, reason_code) -> None:
        verdict = self._watch.disconnected(self._clock.now(), reason_code.value, str(reason_code))
        if verdict.conflict or verdict.recovered:
            m = self.config.mqtt
            client.reconnect_delay_set(verdict.backoff, max(verdict.backoff, m.reconnect_max))
            self._update(backoff=verdict.backoff)
        if verdict.conflict:
            with self._status:
                conflicts = self._stats.get("client_id_conflicts", 0) + 1
            self._report(logging.ERROR if verdict.first else logging.DEBUG, "MQTT: %s",
                         verdict.message, last_error=verdict.message,
                         client_id_conflicts=conflicts)
            return
        if verdict.recovered:
            self._log.info("MQTT: the connection had held; reconnect back-off is %g s again",
                           verdict.backoff)
        self._log.warning("MQTT: lost the connection to %s (%s); reconnecting", self.url,
                          reason_code)

    def _on_log(self, client, userdata, level, text) -> None:
        # paho's messages only at DEBUG (it calls a clean disconnect an error); the failures
        # that matter are reported with their reason by the callbacks above.
        if level == self._paho.MQTT_LOG_ERR:
            self._paho_error = text
        self._paho_log.debug("%s", text)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho holds its message lock here: take only the leaf _status lock, except when
        # _on_ready publishes (a user thread never waits for paho while holding self._lock,
        # so this cannot deadlock).
        with self._status:
            topic = self._mid_topics.pop(mid, None)
            if topic is None and reason_code.is_failure:
                self._early_refusals[mid] = str(reason_code)
        if topic is not None and reason_code.is_failure:
            self._refused(f"message on {topic!r}", str(reason_code))
        self._acknowledged("pub", mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for topic, code in zip(self._sub_topics.pop(mid, ()), reason_codes):
            if code.is_failure:
                self._refused(f"subscription to {topic!r}", str(code))
        self._acknowledged("sub", mid)

    def _on_message(self, client, userdata, message) -> None:
        topic = message.topic
        if topic == self.topics.ha_status:
            if message.payload.strip() == b"online" and self.config.mqtt.discovery:
                self._log.info("MQTT: Home Assistant is online; sending discovery again")
                self._resend_discovery()
            return
        if not topic.startswith(self.topics.command_prefix):
            return
        try:
            answer = handle_command(topic[len(self.topics.command_prefix):], message.payload,
                                    self.config.mqtt.max_payload, self._on_event, origin=self.name,
                                    retained=message.retain)
        except CommandQueueError as exc:
            self._callback_failed("on_event", exc.__cause__ or exc)
            answer = error_result(exc)
        if answer is not None:
            if answer.get("error"):
                self._log.warning("MQTT: rejected command on %r: %s", topic, answer["error"])
            self.publish_result(answer)


def make_publisher(config, on_event: Callable[[Any], Any], clock=None,
                   log: Optional[logging.Logger] = None,
                   max_buttons: Optional[int] = None) -> Publisher:
    """The publisher ``config`` asks for: :class:`MqttPublisher` when ``mqtt.broker`` is set,
    else :class:`StdoutPublisher`. ``on_event`` receives valid remote commands (from paho's thread;
    it should only enqueue). ``max_buttons`` caps Home Assistant's capture buttons (see
    :class:`Publisher`). Not started: call ``start()`` or use it as a context manager."""
    if not config.mqtt.broker:
        if config.mqtt.commands:
            (log or logging.getLogger(__name__)).warning(
                "mqtt.commands is on but there is no mqtt.broker: remote commands are off")
        return StdoutPublisher(config, clock=clock, log=log, max_buttons=max_buttons)
    return MqttPublisher(config, on_event, clock=clock, log=log, max_buttons=max_buttons)
