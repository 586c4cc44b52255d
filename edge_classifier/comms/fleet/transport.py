"""The fleet transport: one more transport on the device's bus, with its own connection to the
broker (paho-mqtt 2.x, imported only in :mod:`~edge_classifier.comms.paho_client`)::

    fleet = FleetTransport(config, post=device.post, state=state_dir, store=store,
                           backbone=backbone)
    bus.add(fleet)           # start() connects in the background
    ...                      # on the loop thread, for every FleetWork event it posts:
    if fleet.work():         # merged what arrived, applied it to the store, sent what is new
        learner.changed()

paho's thread only checks messages (signature, group, sizes: :mod:`.wire`) and queues them;
every change to the state happens in :meth:`work`, on the loop thread, through the store and
the StateDir (:mod:`.sync`). A ticker thread posts a FleetWork every ``TICK`` seconds so what
the user teaches here is sent within that time. Every ``fleet.digest_interval`` a synced
device publishes its digest, re-reads what its peers' digests show it lacks and compacts the
tombstones every device has acknowledged (:mod:`.entropy`).

Fault injection for tests: ``transport.drop`` may be set to a function ``(topic, payload) ->
bool``; a publish for which it returns True is not sent (a message lost on the way), and
counted in ``stats["fleet_lost_on_purpose"]``.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Optional, Set

from edge_classifier.comms import events as ev
from edge_classifier.comms.fleet.entropy import AntiEntropy
from edge_classifier.comms.fleet.sync import FleetSync
from edge_classifier.comms.fleet.upkeep import Upkeep
from edge_classifier.comms.fleet.wire import SHARDS, Message, Wire
from edge_classifier.comms.paho_client import load_paho
from edge_classifier.config.broker import parse_broker_url, read_password_file
from edge_classifier.config.fleet import read_fleet_key
from edge_classifier.core.clock import SYSTEM_CLOCK
from edge_classifier.errors import FleetMessageError

log = logging.getLogger("edge_classifier.fleet")
TICK = 0.2  # seconds between looks at the store for what the user taught here
MAX_INBOUND = 50_000  # messages waiting for the loop; beyond, dropped (retained ones come back)
BATCH = 2000  # messages merged per FleetWork, so frames keep flowing during a large sync
SEND_BATCH = 100  # samples sent per FleetWork (every TICK): receivers keep up with a burst
REASONS = ("forged", "unsigned", "malformed", "oversized", "other_group", "other_backbone",
           "replayed")


@dataclass(frozen=True)
class FleetWork(ev.Event):
    """Asks the loop to run :meth:`FleetTransport.work`."""


def embedding_quantisation(backbone) -> Optional[tuple]:
    """(scale, zero point) of the backbone's uint8 embedding output, if it has one."""
    detail = getattr(backbone, "_embedding_out", None) or {}
    q = detail.get("quantization") if isinstance(detail, dict) else None
    dtype = detail.get("dtype") if isinstance(detail, dict) else None
    if q and q[0] and getattr(dtype, "__name__", str(dtype)) in ("uint8", "<class 'numpy.uint8'>"):
        return float(q[0]), int(q[1])
    return None


class FleetTransport(Upkeep):
    """Shares what this device learns with its group and applies what the group learns."""

    name = "fleet"

    def __init__(self, config, post, *, state, store, backbone, clock=None):
        f = config.fleet
        self.config, self.mode, self.device = config, f.mode, config.device_id
        self._post = post
        self.backbone = backbone
        self.quant = embedding_quantisation(backbone)
        identity = getattr(backbone, "identity", None)
        self.wire = Wire(f.group, read_fleet_key(f), self.device, identity, f.max_message)
        self.wire.thumbnail = f.thumbnail
        self.clock = clock or SYSTEM_CLOCK
        self.sync = FleetSync(state, store, self.device,
                              max_samples_per_class=config.head.max_samples_per_class,
                              wall_ms=lambda: int(self.clock.wall() * 1000))
        self.entropy = AntiEntropy(self.sync, self.device, self.mode, f.digest_interval,
                                   f.horizon_days * 86400.0)
        self.drop: Optional[Callable[[str, bytes], bool]] = None  # fault injection (tests)
        self.stats: Dict[str, Any] = {f"fleet_{r}": 0 for r in REASONS}
        self.stats.update(fleet_connected=False, fleet_sent=0, fleet_bytes_sent=0,
                          fleet_accepted=0, fleet_dropped=0, fleet_republished=0,
                          fleet_digests_sent=0, fleet_digest_bytes=0, fleet_rereads=0, fleet_compacted=0,
                          fleet_forgotten=0, fleet_healed=0, fleet_lost_on_purpose=0)
        self._lock = threading.Lock()
        self._inbound: Deque[Message] = collections.deque()
        self._backlog: Deque[str] = collections.deque()  # sample keys still to send
        self._posted = False
        self._seen: Set[str] = set()  # sample keys retained at the broker since connecting
        self._unconfirmed: Set[str] = set()  # sample keys sent, not yet back from the broker
        self._own_retained = False  # the broker still held our snapshot when we connected
        self._synced = False  # received our last hello since connecting
        self._nonce = ""
        self._online: Dict[str, tuple] = {}  # device -> (seq, offline?) of its availability
        self._said: Set[str] = set()
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        self._avail_seq = 0
        self._contributions: Dict[str, int] = self.sync.replica.contributions()
        paho, client_class = load_paho()
        self._paho = paho
        m = config.mqtt
        self.url = parse_broker_url(m.broker)
        self.client = client_class(paho.CallbackAPIVersion.VERSION2,
                                   client_id=f"{m.client_id or 'edge-classifier-' + self.device}"
                                             "-fleet"[:128], protocol=paho.MQTTv5)
        username = m.username or self.url.username
        password = (read_password_file(m.password_file) if m.password_file
                    else m.password or self.url.password)
        if username:
            self.client.username_pw_set(username, password or None)
        if self.url.tls:
            self.client.tls_set(ca_certs=m.tls_ca or None, certfile=m.tls_cert or None,
                                keyfile=m.tls_key or None)
            if m.tls_insecure:
                self.client.tls_insecure_set(True)
        self.client.reconnect_delay_set(m.reconnect_min, max(m.reconnect_min, m.reconnect_max))
        self.client.on_connect = self._guard(self._on_connect)
        self.client.on_disconnect = self._guard(self._on_disconnect)
        self.client.on_message = self._guard(self._on_message)

    def __repr__(self) -> str:
        return f"FleetTransport(group={self.wire.group!r}, mode={self.mode!r})"

    # -- the publisher interface (the fleet publishes none of the device's outputs) -----------
    def start(self) -> "FleetTransport":
        self._stop.clear()
        self._set_will()
        self.client.connect_async(self.url.host, self.url.port, self.config.mqtt.keepalive)
        self.client.loop_start()
        self._ticker = threading.Thread(target=self._tick, name="fleet-ticker", daemon=True)
        self._ticker.start()
        log.info("fleet: group %r (%s) through %s", self.wire.group, self.mode, self.url)
        self._wake()
        return self

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            if self.client.is_connected():
                topic, payload = self.wire.availability(self._avail_seq, False)
                info = self.client.publish(topic, payload, qos=1, retain=True)
                info.wait_for_publish(3.0)
        except (RuntimeError, ValueError):
            pass
        self.client.disconnect()
        self.client.loop_stop()
        self.stats["fleet_connected"] = False

    def close(self) -> None:
        self.stop()

    def set_classes(self, names) -> None:
        pass

    def publish_state(self, label) -> None:
        pass

    def publish_prediction(self, payload) -> None:
        pass

    def publish_stats(self, payload) -> None:
        pass

    def publish_result(self, payload) -> None:
        pass

    def publish_snapshot(self, jpeg) -> None:
        pass

    # -- paho's thread -------------------------------------------------------------------------
    def _guard(self, fn):
        def guarded(*args):
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - an exception would kill paho's thread
                log.exception("fleet: %s failed", fn.__name__)
        return guarded

    def _set_will(self) -> None:
        self._avail_seq = max(self._avail_seq + 1, time.time_ns() // 1000)
        topic, payload = self.wire.availability(self._avail_seq, False)
        self.client.will_set(topic, payload, qos=1, retain=True)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("fleet: %s refused the connection: %s", self.url, reason_code)
            return
        self.stats["fleet_connected"] = True
        with self._lock:
            self._seen = set()
            self._own_retained = False
            self._synced = False
            self._nonce = secrets.token_hex(8)
        # The samples shard by shard: each shard's retained messages come before our hello on
        # it, and a broker caps what it queues for one client (mosquitto's
        # max_queued_messages, 1000), so a newcomer's whole flood at once would lose the rest.
        client.subscribe([(t, 1) for t in self.wire.metadata_subscriptions])
        topic, payload = self.wire.availability(self._avail_seq, True)
        client.publish(topic, payload, qos=1, retain=True)
        self._subscribe_shard(client, 0)
        log.info("fleet: connected to %s", self.url)

    def _subscribe_shard(self, client, shard: int, again: bool = False) -> None:
        """Subscribe (again: the broker resends the shard's retained messages) and say hello
        after them."""
        if again:
            with self._lock:
                self._seen = {k for k in self._seen if k[19] != SHARDS[shard]}
        client.subscribe(self.wire.shard_subscription(shard), qos=1)
        topic, payload = self.wire.hello(f"{self._nonce}-{'r' if again else ''}{shard}")
        client.publish(topic, payload, qos=1)  # comes back after the shard's retained ones

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.stats["fleet_connected"] = False
        if not self._stop.is_set():
            log.warning("fleet: lost the broker (%s); reconnecting", reason_code)
            self._set_will()

    def _on_message(self, client, userdata, message) -> None:
        try:
            m = self.wire.open(message.topic, bytes(message.payload))
        except FleetMessageError as exc:
            reason = getattr(exc, "reason", "malformed")
            self.stats[f"fleet_{reason}"] = self.stats.get(f"fleet_{reason}", 0) + 1
            self._say_once(reason, str(exc))
            return
        if m.kind == "h":
            if m.sender != self.device:
                return
            nonce, _, shard = m.body["nonce"].rpartition("-")
            again = shard.startswith("r")
            shard = shard[1:] if again else shard
            if nonce != self._nonce or not shard.isdigit() or int(shard) >= len(SHARDS):
                return  # an old hello of ours
            if not again and int(shard) + 1 < len(SHARDS):
                self._subscribe_shard(client, int(shard) + 1)
                return
        if m.kind == "a":
            key = (m.body["seq"], not m.body["online"])
            with self._lock:
                if key <= self._online.get(m.sender, (-1, False)):
                    self.stats["fleet_replayed"] += 1
                    return
                self._online[m.sender] = key
            return
        if m.kind == "gone":
            return  # a snapshot part its sender no longer uses
        with self._lock:
            if m.kind == "s":
                key = message.topic.rsplit("/", 1)[1]
                self._seen.add(key)
                self._unconfirmed.discard(key)
            if m.sender == self.device and m.kind in ("s", "m", "d"):
                self._own_retained |= bool(message.retain) and m.kind in ("m", "d")
                return  # our own, back from the broker
            if len(self._inbound) >= MAX_INBOUND:
                self.stats["fleet_dropped"] += 1
                return
            self._inbound.append(m)
        self._wake()

    def _say_once(self, reason: str, text: str) -> None:
        if reason in self._said:
            return
        self._said.add(reason)
        if reason == "other_backbone":
            log.warning("fleet: ignoring the group's samples from a device with another "
                        "backbone (model or crop) than %s; keeping this device's own",
                        getattr(self.backbone, "name", "this one"))
        else:
            log.warning("fleet: %s (further ones are only counted)", text)

    # -- the ticker ----------------------------------------------------------------------------
    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._posted:
                return
            self._posted = True
        self._post(FleetWork(origin="fleet"))

    # -- the loop thread -----------------------------------------------------------------------
    def work(self) -> bool:
        """Merge what arrived, apply it, send what changed here; True if the store changed."""
        with self._lock:
            self._posted = False
            batch = [self._inbound.popleft() for _ in range(min(BATCH, len(self._inbound)))]
            more = bool(self._inbound)
        accepted, heal, synced, resynced, digests = [], [], False, set(), []
        for m in batch:
            if m.kind == "h":
                tail = m.body["nonce"].rpartition("-")[2]
                if tail.startswith("r"):
                    resynced.add(int(tail[1:]))
                else:
                    synced = True
            elif m.kind == "m":
                status = self.entropy.note_part(m.sender, m.body)
                if status == "replayed":  # an older snapshot
                    self._replayed(f"fleet: an older snapshot of {m.sender} dropped: replayed")
                elif status == "new":  # not the same retained part again, after a reconnect
                    accepted.append(m)
            elif m.kind == "d":
                digests.append(m)
            elif m.kind == "clear":
                heal.append(m.body["key"])
            elif m.kind == "s":
                accepted.append(m)
        if self.mode == "publish":
            accepted = []
        self.stats["fleet_accepted"] += len(accepted)
        out = self.sync.sync(accepted)
        seen = self._upkeep(out, synced, resynced, digests)
        if self.mode != "follow":
            live = self.sync.live_keys()
            healed = [k for k in heal if k in live and self._synced]
            self.stats["fleet_healed"] += len(healed)
            keys = list(out.samples) + healed
            if seen is not None:  # the broker's retained store lacks these (a lost message,
                missing = sorted(k for k in live - seen - set(keys)  # a broker restart)
                                 if (synced or SHARDS.index(k[19]) in resynced)
                                 and (self.mode != "publish" or self._newer(k)))
                self.stats["fleet_republished"] += len(missing)
                keys += missing
            self._backlog.extend(keys)
            for _ in range(min(SEND_BATCH, len(self._backlog))):
                self._send_sample(self._backlog.popleft())
            if out.meta or synced:  # the tombstones before the clears: a receiver that saw
                self._send_meta()  # a clear first would send the sample again (heal)
            for key in out.clears:
                self._send(self.wire.sample_topic(key), b"", retain=True)
        if self._synced and not self._backlog:
            with self._lock:
                confirmed = not self._unconfirmed
            if confirmed:  # the broker holds everything sent from here
                self.sync.contact = self.sync.replica.hlc
        if accepted or out.changed or out.samples or out.meta:
            self._contributions = self.sync.replica.contributions()  # for view()
        if more:
            self._wake()
        return out.changed

    def _send_sample(self, key: str) -> None:
        try:
            msg = self.sync.sample_message(self.wire, key, self.quant)
        except FleetMessageError as exc:
            self._say_once("too_large", str(exc))
            with self._lock:  # never at the broker: the contact stays before it, so a stale
                self._unconfirmed.add(key)  # resync never takes it for a deleted one
            return
        if msg is not None:
            with self._lock:
                self._unconfirmed.add(key)
            self._send(*msg, retain=True)

    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        if self.drop is not None and self.drop(topic, payload):
            self.stats["fleet_lost_on_purpose"] += 1
            return
        self.client.publish(topic, payload, qos=1, retain=retain)
        self.stats["fleet_sent"] += 1
        self.stats["fleet_bytes_sent"] += len(payload) + len(topic)

    # -- what the page shows -------------------------------------------------------------------
    def view(self) -> Dict[str, Any]:
        """The group as this device sees it: its devices, which are online, what each gave
        (any thread: built from the snapshot the loop thread keeps)."""
        with self._lock:
            online = {d: not off for d, (_, off) in self._online.items()}
        contributions = self._contributions
        devices = sorted(set(online) | set(contributions) | {self.device})
        return {"group": self.wire.group, "mode": self.mode, "device": self.device,
                "connected": bool(self.stats["fleet_connected"]),
                "devices": [{"device": d, "online": online.get(d, d == self.device and bool(
                    self.stats["fleet_connected"])), "samples": contributions.get(d, 0),
                    "this": d == self.device} for d in devices],
                "dropped": {r: self.stats[f"fleet_{r}"] for r in REASONS}}
