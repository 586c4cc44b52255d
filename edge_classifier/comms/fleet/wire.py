"""Fleet messages on the wire: topics, signing (HMAC-SHA256 with the group key), encoding and
the checks every received message passes before anything in it is used::

    wire = Wire("shop", b"group secret...", device="shelf-1", backbone=backbone.identity)
    topic, payload = wire.sample(sid, cid, register, views, jpeg, quant)  # signed bytes
    message = wire.open(topic, payload)     # FleetMessageError(reason) unless all checks pass

Topics, all under ``edge_classifier/fleet/<group>/``:

* ``s/<shard>/<sample id>.<class id>`` — one sample (retained): its quantised views, a small
  JPEG thumbnail, and its class's name register; an empty retained payload is the broker's
  deletion of a removed sample (compaction). ``<shard>`` is the sample id's last hex digit:
  a device subscribes to the 16 shards one after the other, so the retained messages the
  broker sends at once stay below what it queues for one client (mosquitto: 1000);
* ``m/<device>`` and ``m/<device>/<part>`` — a device's snapshot of the metadata (retained):
  every class register and tombstone it knows, split into as many parts as keep each message
  under ``fleet.max_message`` (each part signed, all with one ``seq`` and the number of
  parts; any part is a valid piece of state to merge). Snapshots are merged, never replayed:
  their ``seq`` must grow;
* ``d/<device>`` — a device's digest (retained, every ``fleet.digest_interval``): per shard
  the number of live sample keys and a hash of them, and its acknowledgements (for each
  device, the ``seq`` of the newest whole snapshot of it merged here) — anti-entropy while
  connected and the evidence compaction waits for;
* ``a/<device>`` — availability (retained ``online`` / the last will ``offline``);
* ``h/<device>`` — hello (not retained): a device that receives its own hello has received
  every retained message of the group before it.

A payload is ``b"ECF1"`` + 32 bytes of HMAC-SHA256 over ``topic \\0 body`` + ``body`` (JSON).
The MAC is checked with :func:`hmac.compare_digest` before the body is parsed; the body's group,
sender and kind must match the topic's, and every field is bounded (ids are hex of fixed
length, views at most MAX_VIEWS x MAX_DIM, a thumbnail at most MAX_THUMB bytes), so nothing
received is used as a path, a size or a count beyond the limits.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge_classifier.comms.fleet.replica import parse_register, valid_cid, valid_key, valid_sid
from edge_classifier.errors import FleetMessageError

MAGIC = b"ECF1"
MAC_BYTES = 32
ROOT = "edge_classifier/fleet"
MAX_VIEWS = 16
MAX_DIM = 4096
MAX_THUMB = 32 * 1024
MAX_TOMBS = 100_000
MAX_CLASSES = 4096
MAX_PARTS = 256  # snapshot parts: 256 x fleet.max_message of tombstones at most
MAX_DEVICES = 1024  # acknowledgements in one digest
SHARDS = "0123456789abcdef"
_DEVICE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def backbone_digest(identity: Optional[dict]) -> str:
    """A short digest of the backbone identity (model, file hash, dimension, crop): devices
    whose digests differ ignore each other's samples."""
    return hashlib.sha256(json.dumps(identity or {}, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Message:
    kind: str  # "s" sample, "m" snapshot part, "d" digest, "a" availability, "h" hello,
    # "clear" (a sample's retained message emptied), "gone" (a snapshot part no longer used)
    sender: str
    body: Dict[str, Any]
    topic: str
    size: int


def quantise(views: np.ndarray, quant: Optional[Tuple[float, int]]
             ) -> Tuple[bytes, float, int, float]:
    """VxD float views as uint8 bytes with (scale, zero point, offset), read back as
    ``scale * (q - zero) + offset``: the backbone's own quantisation when it has one (its uint8
    output comes back exactly), else the range of these values (within scale / 2)."""
    v = np.asarray(views, dtype=np.float64)
    if quant and quant[0] > 0:
        scale, zero, lo = float(quant[0]), int(quant[1]), 0.0
    else:
        lo, hi = float(v.min()), float(v.max())
        scale, zero = (hi - lo) / 255.0 or 1.0, 0
    q = np.clip(np.round((v - lo) / scale + zero), 0, 255).astype(np.uint8)
    return q.tobytes(), scale, zero, lo


def dequantise(raw: bytes, shape: Tuple[int, int], scale: float, zero: int,
               offset: float = 0.0) -> np.ndarray:
    q = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    real = scale * (q.astype(np.int64) - zero)
    return (real + offset if offset else real).astype(np.float32)


class Wire:
    """Builds and checks the group's messages (see the module's docstring)."""

    def __init__(self, group: str, key: bytes, device: str, backbone: Optional[dict],
                 max_message: int = 256 * 1024):
        self.group = group
        self._key = key
        self.device = device
        self.backbone = backbone_digest(backbone)
        self.dim = int((backbone or {}).get("embedding_dim") or 0)
        self.max_message = max_message
        self.prefix = f"{ROOT}/{group}/"

    def __repr__(self) -> str:  # never the key
        return f"Wire(group={self.group!r}, device={self.device!r})"

    # -- topics --------------------------------------------------------------------------------
    @property
    def subscription(self) -> str:
        return self.prefix + "#"

    @property
    def metadata_subscriptions(self) -> List[str]:
        return [self.prefix + k + "/#" for k in ("m", "d", "a", "h")]

    def shard_subscription(self, shard: int) -> str:
        return f"{self.prefix}s/{SHARDS[shard]}/#"

    def sample_topic(self, key: str) -> str:
        return f"{self.prefix}s/{key[19]}/{key}"

    def topic(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}/{name}"

    # -- building ------------------------------------------------------------------------------
    def _seal(self, topic: str, body: dict) -> bytes:
        data = json.dumps(dict(body, g=self.group, d=self.device, bb=self.backbone),
                          separators=(",", ":")).encode()
        mac = hmac.new(self._key, topic.encode() + b"\0" + data, hashlib.sha256).digest()
        payload = MAGIC + mac + data
        if len(payload) > self.max_message:
            raise FleetMessageError(f"a fleet message of {len(payload)} bytes is over "
                                    f"fleet.max_message ({self.max_message})")
        return payload

    def sample(self, sid: str, cid: str, register, origin: str, hlc: int, views: np.ndarray,
               jpeg: Optional[bytes], quant=None) -> Tuple[str, bytes]:
        raw, scale, zero, lo = quantise(views, quant)
        views = np.atleast_2d(views)
        body = {"k": "s", "sid": sid, "cid": cid, "reg": list(register), "o": origin, "h": hlc,
                "shape": list(views.shape), "scale": scale, "zero": zero, "lo": lo,
                "e": base64.b64encode(raw).decode(),
                "th": base64.b64encode(jpeg).decode() if jpeg else None}
        topic = self.sample_topic(f"{sid}.{cid}")
        return topic, self._seal(topic, body)

    def meta_topic(self, part: int) -> str:
        return self.topic("m", self.device) + (f"/{part}" if part else "")

    def meta(self, seq: int, classes: Dict[str, Any], tombs, contributed: int,
             part: int = 0, parts: int = 1) -> Tuple[str, bytes]:
        """One snapshot part; ``tombs`` is ``{key: (stamp, origin)}`` (or bare keys)."""
        if not isinstance(tombs, dict):
            tombs = {k: (0, "") for k in tombs}
        grouped: Dict[str, Dict[str, int]] = {}
        for key, (stamp, origin) in sorted(tombs.items()):
            grouped.setdefault(origin, {})[key] = stamp
        body = {"k": "m", "seq": seq, "part": part, "parts": parts,
                "classes": {c: list(r) for c, r in classes.items()}, "tombs": grouped,
                "n": contributed}
        topic = self.meta_topic(part)
        return topic, self._seal(topic, body)

    def meta_parts(self, seq: int, classes: Dict[str, Any], tombs: Dict[str, Tuple[int, str]],
                   contributed: int) -> List[Tuple[str, bytes]]:
        """The whole snapshot as signed parts, each under ``max_message`` (FleetMessageError
        beyond MAX_PARTS)."""
        items = [("c", c, r, len(c) + 40 + len(r[1]) + len(r[2] or ""))
                 for c, r in sorted(classes.items())]
        items += [("t", k, t, len(k) + 24 + len(t[1])) for k, t in sorted(tombs.items())]
        budget = max(1024, self.max_message * 9 // 10 - 400)
        chunks: List[list] = [[]]
        used = 0
        for item in items:
            if chunks[-1] and used + item[3] > budget:
                chunks.append([])
                used = 0
            chunks[-1].append(item)
            used += item[3]
        if len(chunks) > MAX_PARTS:
            raise FleetMessageError(f"a fleet snapshot of {len(chunks)} parts is over "
                                    f"{MAX_PARTS}: raise fleet.max_message")
        return [self.meta(seq, {c: r for kind, c, r, _ in chunk if kind == "c"},
                          {k: t for kind, k, t, _ in chunk if kind == "t"}, contributed,
                          i, len(chunks)) for i, chunk in enumerate(chunks)]

    def digest(self, seq: int, mode: str, acks: Dict[str, int],
               shards: List[Tuple[int, str]]) -> Tuple[str, bytes]:
        topic = self.topic("d", self.device)
        return topic, self._seal(topic, {"k": "d", "seq": seq, "mode": mode, "ack": acks,
                                         "sh": [list(x) for x in shards]})

    def availability(self, seq: int, online: bool) -> Tuple[str, bytes]:
        topic = self.topic("a", self.device)
        return topic, self._seal(topic, {"k": "a", "seq": seq, "online": online})

    def hello(self, nonce: str) -> Tuple[str, bytes]:
        topic = self.topic("h", self.device)
        return topic, self._seal(topic, {"k": "h", "nonce": nonce})

    # -- checking ------------------------------------------------------------------------------
    def open(self, topic: str, payload: bytes) -> Message:
        """The checked message; FleetMessageError whose ``reason`` names the check that failed
        (``other_group``, ``oversized``, ``unsigned``, ``forged``, ``malformed``,
        ``other_backbone``)."""
        if not topic.startswith(self.prefix):
            raise _reject("other_group", topic)
        rest = topic[len(self.prefix):].split("/")
        if len(rest) == 3 and rest[0] == "s" and valid_key(rest[2]) and rest[1] == rest[2][19]:
            kind, name = "s", rest[2]
        elif len(rest) == 2 and rest[0] in ("m", "d", "a", "h"):
            kind, name = rest
        elif len(rest) == 3 and rest[0] == "m" and re.fullmatch(r"[1-9][0-9]{0,2}", rest[2]) \
                and int(rest[2]) < MAX_PARTS:
            kind, name = "m", rest[1]
        else:
            raise _reject("malformed", topic)
        if len(payload) > self.max_message:
            raise _reject("oversized", topic)
        if not payload:
            if kind == "s" and valid_key(name):
                return Message("clear", "", {"key": name}, topic, 0)
            if kind == "m" and len(rest) == 3:
                return Message("gone", "", {}, topic, 0)
            raise _reject("malformed", topic)
        if not payload.startswith(MAGIC) or len(payload) < len(MAGIC) + MAC_BYTES:
            raise _reject("unsigned", topic)
        mac, data = payload[4:4 + MAC_BYTES], payload[4 + MAC_BYTES:]
        want = hmac.new(self._key, topic.encode() + b"\0" + data, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, want):
            raise _reject("forged", topic)
        try:
            body = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _reject("malformed", topic) from None
        if not isinstance(body, dict) or body.get("k") != kind:
            raise _reject("malformed", topic)
        if body.get("g") != self.group:
            raise _reject("other_group", topic)
        sender = body.get("d")
        if not isinstance(sender, str) or not _DEVICE.fullmatch(sender):
            raise _reject("malformed", topic)
        if kind in ("m", "d", "a", "h") and name != sender:
            raise _reject("malformed", topic)
        if body.get("bb") != self.backbone and kind in ("s", "m", "d"):
            raise _reject("other_backbone", topic)
        check = {"s": self._check_sample, "m": _check_meta, "d": _check_digest,
                 "a": _check_seq, "h": _check_hello}[kind]
        if not check(body, name):
            raise _reject("malformed", topic)
        if kind == "m" and body["part"] != (int(rest[2]) if len(rest) == 3 else 0):
            raise _reject("malformed", topic)
        return Message(kind, sender, body, topic, len(payload))

    def _check_sample(self, b: dict, name: str) -> bool:
        sid, cid = b.get("sid"), b.get("cid")
        if not (valid_sid(sid) and valid_cid(cid) and name == f"{sid}.{cid}"):
            return False
        if parse_register(b.get("reg")) is None or not isinstance(b.get("o"), str) or \
                not _DEVICE.fullmatch(b["o"]) or not _int(b.get("h")):
            return False
        shape = b.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(_int(x) for x in shape)
                and 1 <= shape[0] <= MAX_VIEWS and 1 <= shape[1] <= MAX_DIM
                and (not self.dim or shape[1] == self.dim)):
            return False
        scale, zero, lo = b.get("scale"), b.get("zero"), b.get("lo")
        if not (isinstance(scale, float) and np.isfinite(scale) and 0 < scale < 1e6
                and _int(zero) and 0 <= zero <= 255 and isinstance(lo, float)
                and np.isfinite(lo) and abs(lo) < 1e6):
            return False
        try:
            raw = base64.b64decode(b.get("e") or "", validate=True)
            thumb = base64.b64decode(b["th"], validate=True) if b.get("th") else None
        except (ValueError, TypeError):
            return False
        if len(raw) != shape[0] * shape[1] or (thumb is not None and len(thumb) > MAX_THUMB):
            return False
        b["views"] = dequantise(raw, (shape[0], shape[1]), scale, zero, lo)
        b["thumb"] = thumb
        b["reg"] = parse_register(b["reg"])
        return True


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62


def _check_seq(b: dict, name: str) -> bool:
    return _int(b.get("seq")) and isinstance(b.get("online", False), bool)


def _check_hello(b: dict, name: str) -> bool:
    return isinstance(b.get("nonce"), str) and len(b["nonce"]) <= 64


def _check_digest(b: dict, name: str) -> bool:
    acks, shards = b.get("ack"), b.get("sh")
    if not (_check_seq(b, name) and b.get("mode") in ("share", "follow", "publish")
            and isinstance(acks, dict) and len(acks) <= MAX_DEVICES
            and all(_DEVICE.fullmatch(d) and _int(s) for d, s in acks.items())
            and isinstance(shards, list) and len(shards) == len(SHARDS)):
        return False
    for x in shards:
        if not (isinstance(x, list) and len(x) == 2 and _int(x[0]) and isinstance(x[1], str)
                and len(x[1]) == 16):
            return False
    b["sh"] = [tuple(x) for x in shards]
    return True


def _check_meta(b: dict, name: str) -> bool:
    classes, grouped = b.get("classes"), b.get("tombs")
    if not (_check_seq(b, name) and isinstance(classes, dict) and isinstance(grouped, dict)
            and len(classes) <= MAX_CLASSES and len(grouped) <= MAX_DEVICES
            and _int(b.get("n")) and _int(b.get("parts")) and 1 <= b["parts"] <= MAX_PARTS
            and _int(b.get("part")) and b["part"] < b["parts"]):
        return False
    tombs: Dict[str, Tuple[int, str]] = {}
    for origin, keys in grouped.items():
        if not (isinstance(origin, str) and (origin == "" or _DEVICE.fullmatch(origin))
                and isinstance(keys, dict) and len(tombs) + len(keys) <= MAX_TOMBS):
            return False
        for key, stamp in keys.items():
            if not (valid_key(key) and _int(stamp)):
                return False
            tombs[key] = (stamp, origin)
    b["tombs"] = tombs
    parsed = {}
    for cid, reg in classes.items():
        r = parse_register(reg)
        if not valid_cid(cid) or r is None:
            return False
        parsed[cid] = r
    b["classes"] = parsed
    return True


def _reject(reason: str, topic: str) -> FleetMessageError:
    exc = FleetMessageError(f"fleet message on {topic[:120]!r} dropped: {reason}")
    exc.reason = reason
    return exc
