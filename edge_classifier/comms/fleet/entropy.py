"""Anti-entropy while connected, acknowledgements, and when tombstones may be compacted::

    ae = AntiEntropy(sync, "kitchen", "share", interval=60.0, horizon=7 * 86400.0)
    ae.note_part("hall", body)          # a snapshot part: "new", "dup" or "replayed"
    ae.note_digest("hall", body, mine)  # -> Reread(shards={3}, meta=False)
    if ae.due(clock.now()):
        seq, acks, shards = ae.digest()  # what wire.digest() signs
        keys = ae.compactable()          # tombstones every device that counts has

**Digests.** Every ``interval`` seconds a synced device publishes (retained) per shard the
number of its live sample keys and a hash of them, and its acknowledgements: for each device,
the ``seq`` of the newest *whole* snapshot of it merged here (all its parts). A device that
sees another's shard hash differ from its own in two digests running, neither of them
changed in between (so not a sync still under way), re-reads that shard's
retained messages (subscribing again makes the broker send them) and, at the hello that
follows, republishes the live samples of the shard the broker lacks; one whose
acknowledgement of a device lags the ``seq`` that device acknowledges of itself re-reads the
snapshots. So a message lost while connected is repaired within about two intervals.

**Compaction.** A tombstone ``(stamp, origin)`` is dropped once every device that counts has
acknowledged a snapshot of ``origin`` with a larger ``seq`` (a snapshot stamped after a
tombstone carries it): the devices whose newest digest is younger than the ``horizon``, and
this one. Publish-only devices do not count (they merge nothing) and never republish a
sample older than their last contact. A device whose digest is older than the horizon is no
longer waited for; when it comes back (its own last contact older than half the horizon, a
margin for clocks that disagree) it is *stale*: after re-reading the retained state it
forgets the samples the group no longer holds instead of pushing them (see
:meth:`AntiEntropy.stale_forget`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Dict, List, Set, Tuple

from edge_classifier.comms.fleet.replica import split_key
from edge_classifier.comms.fleet.wire import SHARDS


@dataclass
class Reread:
    shards: Set[int] = field(default_factory=set)
    meta: bool = False


def shard_digest(replica) -> List[Tuple[int, str]]:
    """Per shard ``(count, hash)`` of the sample keys whose sample id has no tombstone: equal
    on two devices that received the same sample messages and snapshots."""
    dead = replica.dead_sids()
    keys: List[List[str]] = [[] for _ in SHARDS]
    for key in replica.samples:
        if split_key(key)[0] not in dead:
            keys[SHARDS.index(key[19])].append(key)
    out = []
    for shard in keys:
        h = hashlib.sha256("\n".join(sorted(shard)).encode()).hexdigest()[:16]
        out.append((len(shard), h))
    return out


class AntiEntropy:
    """Digests, acknowledgements and compaction for one device (see the module's docstring).

    Its state lives in ``sync.peers`` (saved in ``fleet.json``): per device ``meta`` (the
    largest snapshot ``seq`` seen), ``got``/``parts`` (the parts of it received), ``acked``
    (the newest whole snapshot merged) and ``digest`` (its newest digest: ``seq``, ``mode``,
    ``ack``); and in ``sync.contact``, the clock of the last moment this device knew the broker
    held everything it had sent.
    """

    def __init__(self, sync, device: str, mode: str, interval: float, horizon: float):
        self.sync, self.device, self.mode = sync, device, mode
        self.interval, self.horizon_ms = interval, int(horizon * 1000)
        self._last = None  # clock of the last digest sent
        self._suspect: Dict[str, Tuple[list, bool]] = {}
        self._reread_at: Dict[object, float] = {}

    # -- what arrives --------------------------------------------------------------------------
    def note_part(self, sender: str, body: dict) -> str:
        """Track a snapshot part: ``replayed`` (older than one seen), ``dup`` or ``new``."""
        p = self.sync.peers.setdefault(sender, {})
        seq, part = body["seq"], body["part"]
        last = p.get("meta", -1)
        if seq < last:
            return "replayed"
        if seq > last:
            p.update(meta=seq, got=[], parts=body["parts"])
        got = p.setdefault("got", [])
        if part in got:
            return "dup"
        got.append(part)
        p["contributed"] = body["n"]
        if len(got) >= p.get("parts", 1):
            p["acked"] = seq
        return "new"

    def note_digest(self, sender: str, body: dict, now: float, mine=None) -> Reread:
        """Record a peer's digest (an older one than seen raises ValueError: replayed) and
        say what to re-read; ``mine`` is this device's shard digest (None: not synced)."""
        p = self.sync.peers.setdefault(sender, {})
        last = (p.get("digest") or {}).get("seq", -1)
        if body["seq"] < last:
            raise ValueError("replayed")
        if body["seq"] == last:  # the same retained digest again
            return Reread()
        p["digest"] = {"seq": body["seq"], "mode": body["mode"], "ack": dict(body["ack"])}
        out = Reread()
        if body["mode"] == "publish" or self.mode == "publish" or mine is None:
            return out
        pairs = [(tuple(a), tuple(b)) for a, b in zip(mine, body["sh"])]
        behind = body["ack"].get(sender, -1) > p.get("acked", -1)
        was_pairs, was_behind = self._suspect.get(sender, ([], False))
        self._suspect[sender] = (pairs, behind)
        for i, (a, b) in enumerate(pairs):  # different, and neither side changed since the
            if a != b and i < len(was_pairs) and was_pairs[i] == (a, b) and \
                    self._may_reread(i, now):  # last digest: no message still in flight
                out.shards.add(i)
        out.meta = behind and was_behind and self._may_reread("m", now)
        return out

    def _may_reread(self, what, now: float) -> bool:
        if now - self._reread_at.get(what, float("-inf")) < self.interval:
            return False
        self._reread_at[what] = now
        return True

    # -- what is sent --------------------------------------------------------------------------
    def due(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True

    def acks(self) -> Dict[str, int]:
        acks = {d: p["acked"] for d, p in self.sync.peers.items() if isinstance(p.get("acked"), int)}
        acks[self.device] = self.sync.seq
        return acks

    def digest(self) -> Tuple[int, Dict[str, int], List[Tuple[int, str]]]:
        return self.sync.replica.tick(), self.acks(), shard_digest(self.sync.replica)

    # -- compaction ----------------------------------------------------------------------------
    def counted(self) -> Dict[str, Dict[str, int]]:
        """The acknowledgements compaction waits for: this device's and those of every device
        (not publish-only) whose newest digest is younger than the horizon."""
        now = self.sync.replica.tick()
        out = {self.device: self.acks()}
        for d, p in self.sync.peers.items():
            dg = p.get("digest") or {}
            if d != self.device and dg.get("mode") in ("share", "follow") and \
                    now - dg.get("seq", 0) <= self.horizon_ms:
                out[d] = dg.get("ack") or {}
        return out

    def compactable(self) -> List[str]:
        return self.sync.replica.compactable(self.counted())

    # -- a device back after the horizon -------------------------------------------------------
    def stale(self, now_ms: int) -> bool:
        """True if this device's last contact is older than half the horizon: the group may
        have compacted tombstones it never saw."""
        contact = self.sync.contact
        return bool(contact) and now_ms - contact > self.horizon_ms // 2

    def stale_forget(self, retained: Set[str]) -> List[str]:
        """The adds a stale device forgets once it has re-read the retained state: those the
        broker no longer holds that the group knew (received here, or sent from here before
        the last contact). Its samples taught since the last contact are kept and sent."""
        r, contact = self.sync.replica, self.sync.contact
        dead = r.dead_sids()
        return sorted(k for k, (origin, hlc) in r.samples.items()
                      if k not in retained and split_key(k)[0] not in dead
                      and (origin != self.device or hlc <= contact))
