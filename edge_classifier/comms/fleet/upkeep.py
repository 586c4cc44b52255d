"""The fleet transport's upkeep on the loop thread: digests, re-reading what they show is
missing, compaction, a stale device's resync, and snapshots in parts (:mod:`.entropy`)::

    class FleetTransport(Upkeep): ...
    seen = self._upkeep(out, synced, resynced, digests)   # in work(), after sync.sync()

A mixin of :class:`~edge_classifier.comms.fleet.transport.FleetTransport`: it uses its
``sync``, ``entropy``, ``wire``, ``client``, ``clock``, ``stats`` and ``_send``.
"""

from __future__ import annotations

import logging
from typing import Optional, Set

from edge_classifier.comms.fleet.entropy import shard_digest
from edge_classifier.errors import FleetMessageError

log = logging.getLogger("edge_classifier.fleet")


class Upkeep:
    def _upkeep(self, out, synced: bool, resynced: Set[int], digests) -> Optional[Set[str]]:
        """Once synced: a stale device's forgetting; every digest interval: the digest and
        compaction. Returns the sample keys the broker retains when a (re-)read just ended
        (else None)."""
        with self._lock:
            seen = set(self._seen) if synced or resynced else None
            own_retained = self._own_retained
        if synced:
            self._synced = True
            if self.mode != "publish" and own_retained and \
                    self.entropy.stale(self.sync.replica.tick()):
                forget = self.entropy.stale_forget(seen)  # back after the horizon
                self.stats["fleet_forgotten"] += len(forget)
                log.warning("fleet: this device was away longer than half of "
                            "fleet.horizon_days; %d samples the group no longer holds are "
                            "dropped here instead of sent again", len(forget))
                self._merge_out(out, self.sync.drop(forget=forget))
        self._reread(digests)
        if self._synced and self.entropy.due(self.clock.now()):
            if self._contact_matters():
                self.sync.save()
            if self.mode != "publish":  # publish-only devices are not waited for
                self._send_digest()
            compact = self.entropy.compactable()
            if compact:
                self.stats["fleet_compacted"] += len(compact)
                self._merge_out(out, self.sync.drop(compact=compact))
        return seen

    def _contact_matters(self) -> bool:
        """Whether to save ``fleet.json`` for the contact: when a sample sent from here is
        newer than the saved one (it must not count as taught after it), and every twentieth
        of the horizon (what staleness is measured with)."""
        s = self.sync
        if s.contact <= s.saved_contact:
            return False
        return s.contact - s.saved_contact >= self.entropy.horizon_ms // 20 or any(
            origin == self.device and hlc > s.saved_contact
            for origin, hlc in s.replica.samples.values())

    def _newer(self, key: str) -> bool:
        origin, hlc = self.sync.replica.samples.get(key, ("", 0))
        return origin == self.device and hlc > self.sync.contact

    @staticmethod
    def _merge_out(out, more) -> None:
        out.clears += more.clears
        out.meta |= more.meta
        out.changed |= more.changed

    def _replayed(self, text: str) -> None:
        self.stats["fleet_replayed"] += 1
        self._say_once("replayed", text)

    def _reread(self, digests) -> None:
        """Note the peers' digests; re-read what they show this device lacks."""
        mine, now = None, self.clock.now()
        for m in digests:
            if mine is None and self._synced and self.mode != "publish":
                mine = shard_digest(self.sync.replica)
            try:
                todo = self.entropy.note_digest(m.sender, m.body, now, mine)
            except ValueError:
                self._replayed(f"fleet: an older digest of {m.sender} dropped: replayed")
                continue
            for shard in sorted(todo.shards):
                self.stats["fleet_rereads"] += 1
                self._subscribe_shard(self.client, shard, again=True)
            if todo.meta:
                self.stats["fleet_rereads"] += 1
                self.client.subscribe(self.wire.prefix + "m/#", qos=1)

    def _send_digest(self) -> None:
        seq, acks, shards = self.entropy.digest()
        topic, payload = self.wire.digest(seq, self.mode, acks, shards)
        self._send(topic, payload, retain=True)
        self.stats["fleet_digests_sent"] += 1
        self.stats["fleet_digest_bytes"] += len(topic) + len(payload)

    def _send_meta(self) -> None:
        """The snapshot, in as many signed parts as it needs; parts no longer used emptied."""
        r = self.sync.replica
        mine = self.sync.replica.contributions().get(self.device, 0)
        try:
            parts = self.wire.meta_parts(self.sync.next_seq(), r.classes, r.tombs, mine)
        except FleetMessageError as exc:
            self._say_once("meta_too_large", str(exc))
            return
        old, self.sync.parts = self.sync.parts, len(parts)
        self.sync.save()  # the sequence number is kept before it is used
        for topic, payload in parts:
            self._send(topic, payload, retain=True)
        for part in range(len(parts), old):
            self._send(self.wire.meta_topic(part), b"", retain=True)

