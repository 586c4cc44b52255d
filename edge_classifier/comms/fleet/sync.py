"""Keeping a device's sample store and the group's replicated state in step, on the loop thread.

The store stays the truth about what the user did here; the fleet compares it with what it held
at the last sync (``base``) to find local operations, and compares both with the projection
of the replica to tell an operation of the user from one the fleet applied itself::

    sync = FleetSync(state_dir, store, "kitchen")
    out = sync.sync(received)      # -> Outgoing: samples to publish, keys to clear, meta?
    if out.changed: learner.changed()

Crash safety (``kill -9`` at any point loses nothing and duplicates nothing): received state
is merged and saved to ``fleet.json`` *before* the store is changed, and ``base`` is saved
after; an interrupted application is recognised at the next start because the store then
agrees with the saved projection (not a user's operation), and the sample ids in the store
are the group's ids, so re-applying is idempotent.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
from PIL import Image

from edge_classifier.comms.fleet.replica import Replica, parse_register, sample_key, split_key
from edge_classifier.core.names import class_key
from edge_classifier.errors import ClassLimitError, StoreError, UnknownClassError

log = logging.getLogger("edge_classifier.fleet")
VERSION = 1


@dataclass
class Outgoing:
    samples: List[str] = field(default_factory=list)  # keys to publish
    clears: List[str] = field(default_factory=list)  # retained sample topics to empty
    meta: bool = False
    changed: bool = False  # the store changed: refit the head


class FleetSync:
    """The replica of one device and its store (see the module's docstring).

    :param max_samples_per_class: received samples beyond it are not stored here (counted in
        ``stats["over_limit"]``); the store's ``max_classes`` refuses classes beyond it
        (``stats["refused_classes"]``).
    """

    def __init__(self, state, store, device: str, *, max_samples_per_class: Optional[int] = None,
                 wall_ms=None):
        self.state, self.store, self.device = state, store, device
        self.limit = max_samples_per_class
        self.replica = Replica(device, wall_ms)
        self.base: Dict[str, dict] = {}  # folder -> {"name", "cids", "sids"}
        self.peers: Dict[str, dict] = {}  # device -> {"meta": seq, "avail": seq, "online"}
        self.seq = 0
        self.contact = 0  # hlc when the broker last held everything sent from here
        self.parts = 1  # parts of the last snapshot sent
        self.saved_contact = 0
        self.payloads: Dict[str, Tuple[np.ndarray, Optional[bytes]]] = {}
        self.stats = {"received": 0, "applied": 0, "over_limit": 0, "refused_classes": 0,
                      "waiting": 0}
        data = state.read_fleet()
        if data and data.get("version") == VERSION and data.get("device") == device:
            self.replica.load_json(data.get("replica") or {})
            self.base = _parse_base(data.get("base"))
            self.peers = {k: v for k, v in (data.get("peers") or {}).items()
                          if isinstance(k, str) and isinstance(v, dict)}
            self.seq = data["seq"] if isinstance(data.get("seq"), int) else 0
            self.contact = data["contact"] if isinstance(data.get("contact"), int) else 0
            self.parts = data["parts"] if isinstance(data.get("parts"), int) else 1
            self.saved_contact = self.contact

    # -- persistence ---------------------------------------------------------------------------
    def save(self) -> None:
        self.saved_contact = self.contact
        self.state.write_fleet({
            "version": VERSION, "device": self.device, "seq": self.seq,
            "contact": self.contact, "parts": self.parts,
            "replica": self.replica.to_json(), "peers": self.peers,
            "base": {f: {"name": b["name"], "cids": sorted(b["cids"]), "sids": sorted(b["sids"])}
                     for f, b in self.base.items()}})

    def next_seq(self) -> int:
        """A sequence number larger than every earlier one and every stamp made so far (also
        after a lost fleet.json): a snapshot's ``seq`` is larger than the stamp of every
        tombstone it carries, which compaction relies on."""
        self.replica.observe(self.seq)
        self.seq = self.replica.tick()
        return self.seq

    # -- one round -----------------------------------------------------------------------------
    def sync(self, received=()) -> Outgoing:
        """Ingest the user's operations, merge ``received`` (checked messages), save, apply
        the projection to the store, save again."""
        out = Outgoing()
        local = self.ingest_local(out)
        merged = self.merge(received, out)
        if local or merged:
            self.save()
        if merged or self.payloads or local:
            self._apply_and_save(out)
        return out

    def ingest_local(self, out: Outgoing) -> bool:
        """Turn what changed in the store since ``base`` into replica operations."""
        r, store = self.replica, self.store
        groups = r.projection()
        group_of = {cid: g for g in groups.values() for cid in g.cids}
        now = {store.class_folder(n): n for n in store.classes}
        ops = False
        for folder, b in list(self.base.items()):
            if folder in now:
                continue
            if any(c in group_of for c in b["cids"]):  # the user deleted the class
                for key in r.live_keys(b["cids"]):
                    r.remove(key)
                    out.clears.append(key)
                for cid in b["cids"]:
                    r.rename(cid, None)
                ops = True
            del self.base[folder]
        for folder, name in now.items():
            b = self.base.get(folder)
            if b is None:
                g = groups.get(class_key(name))
                cids = set(g.cids) if g is not None else {r.new_class(name)}
                ops |= g is None
                b = self.base[folder] = {"name": name, "cids": cids, "sids": set()}
            g = next((group_of[c] for c in sorted(b["cids"]) if c in group_of), None)
            if name != b["name"] and not (g is not None and g.name == name):
                for cid in sorted(b["cids"]):  # the user renamed the class
                    r.rename(cid, name)
                ops = True
            b["name"] = name
            projected = g.sids if g is not None else set()
            sids = set(store.sample_ids(name))
            primary = min(b["cids"])
            for sid in sorted(sids - b["sids"]):
                if sid not in projected:  # taught here
                    out.samples.append(r.add_sample(sid, primary))
                    ops = True
            for sid in sorted(b["sids"] - sids):
                if sid in projected:  # deleted here
                    for cid in b["cids"]:
                        key = sample_key(sid, cid)
                        if key in r.samples and key not in r.tombs:
                            r.remove(key)
                            out.clears.append(key)
                    ops = True
            b["sids"] = sids
        out.meta |= ops
        return ops

    def merge(self, received, out: Outgoing) -> bool:
        """Merge checked messages (:class:`~edge_classifier.comms.fleet.wire.Message`)."""
        r, merged = self.replica, False
        for m in received:
            self.stats["received"] += 1
            b = m.body
            if m.kind == "s":
                key = sample_key(b["sid"], b["cid"])
                merged |= r.merge_register(b["cid"], b["reg"])
                if key in r.tombs:
                    out.clears.append(key)  # a removed sample still retained: compact it
                    continue
                merged |= r.merge_sample(key, b["o"], b["h"])
                self.payloads[key] = (b["views"], b["thumb"])
            elif m.kind == "m":
                merged |= r.merge_classes(b["classes"])
                merged |= r.merge_tombs(b["tombs"])
        return merged

    def drop(self, forget=(), compact=()) -> Outgoing:
        """Forget adds the group no longer holds and compact tombstones (see
        :mod:`.entropy`), then make the store hold the projection; ``clears`` are the sample
        topics to empty."""
        out = Outgoing()
        self.replica.forget(forget)
        out.clears = self.replica.compact(compact)
        out.clears += [k for k in compact if k not in out.clears]
        out.meta = bool(compact)
        if forget or compact:
            self.save()
            self._apply_and_save(out)
        return out

    def _apply_and_save(self, out: Outgoing) -> None:
        """Make the store hold the projection (``out.changed``), then save the replica."""
        out.changed = self.apply(out)
        self.save()

    # -- applying the projection ---------------------------------------------------------------
    def apply(self, out: Outgoing) -> bool:
        """Make the store hold the projection; returns True if it changed."""
        r, store = self.replica, self.store
        groups = r.projection()
        group_of = {cid: g for g in groups.values() for cid in g.cids}
        changed = False
        for folder, b in list(self.base.items()):  # renames first: samples stay in place
            targets = {id(group_of[c]): group_of[c] for c in b["cids"] if c in group_of}
            if len(targets) != 1:
                continue
            g = next(iter(targets.values()))
            try:
                current = store.resolve(b["name"])
            except (UnknownClassError, StoreError):
                continue
            clash = next((n for n in store.classes if class_key(n) == class_key(g.name)), None)
            if g.name != current and (clash is None or clash == current):
                store.rename_class(current, g.name)
                b["name"] = g.name
                changed = True
        waiting = 0
        for k, g in sorted(groups.items()):
            name = next((n for n in store.classes if class_key(n) == k), None)
            if name is None:
                try:
                    name = store.add_class(g.name)
                except ClassLimitError:
                    self.stats["refused_classes"] += 1
                    continue
                changed = True
            have = set(store.sample_ids(name))
            room = None if self.limit is None else self.limit - len(have)
            for sid in sorted(g.sids - have):
                if room is not None and room <= 0:
                    self.stats["over_limit"] += 1
                    continue
                payload = self._payload(sid, g.cids)
                if payload is None:
                    waiting += 1
                    continue
                store.add_sample(name, payload[0], payload[1], sample_id=sid)
                self.stats["applied"] += 1
                room = None if room is None else room - 1
                changed = True
            for sid in sorted(have - g.sids):  # removed by the group
                store.remove_sample(name, sid)
                changed = True
        for name in list(store.classes):  # deleted by the group
            if class_key(name) not in groups:
                store.delete_class(name)
                changed = True
        self.stats["waiting"] = waiting
        self.payloads.clear()
        self.base = {}
        for name in store.classes:
            g = groups.get(class_key(name))
            self.base[store.class_folder(name)] = {
                "name": name, "cids": set(g.cids) if g else set(),
                "sids": set(store.sample_ids(name))}
        return changed

    def _payload(self, sid: str, cids) -> Optional[Tuple[np.ndarray, Optional[np.ndarray]]]:
        for cid in sorted(cids):
            got = self.payloads.get(sample_key(sid, cid))
            if got is not None:
                return got[0], _decode_jpeg(got[1])
        for name in self.store.classes:  # moved between local classes (a merge by rename)
            if self.store.has_sample(name, sid):
                path = self.store.thumbnail_path(name, sid)
                return self.store.views(name, sid), \
                    _decode_jpeg(path.read_bytes()) if path is not None else None
        return None

    # -- what the group sees -------------------------------------------------------------------
    def sample_message(self, wire, key: str, quant=None):
        """(topic, payload) of a live sample this store holds, or None."""
        sid, cid = split_key(key)
        reg = self.replica.classes.get(cid)
        origin, hlc = self.replica.samples.get(key, (self.device, 0))
        if reg is None or reg[2] is None or key in self.replica.tombs:
            return None
        for name in self.store.classes:
            if self.store.has_sample(name, sid):
                path = self.store.thumbnail_path(name, sid)
                jpeg = _small_jpeg(path.read_bytes(), wire_thumb(wire)) if path else None
                return wire.sample(sid, cid, reg, origin, hlc, self.store.views(name, sid),
                                   jpeg, quant)
        return None

    def live_keys(self) -> Set[str]:
        return set(self.replica.live_keys(self.replica.live_classes()))


def wire_thumb(wire) -> int:
    return getattr(wire, "thumbnail", 64)


def _decode_jpeg(data: Optional[bytes]) -> Optional[np.ndarray]:
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > 1024 * 1024:
                return None
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _small_jpeg(data: bytes, size: int) -> Optional[bytes]:
    if size <= 0:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            scale = size / min(im.size)
            if scale < 1:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=70)
            return buf.getvalue()
    except (OSError, ValueError):
        return None


def _parse_base(data) -> Dict[str, dict]:
    base: Dict[str, dict] = {}
    for folder, b in (data or {}).items() if isinstance(data, dict) else []:
        if isinstance(b, dict) and isinstance(b.get("name"), str):
            base[folder] = {"name": b["name"], "cids": set(b.get("cids") or []),
                            "sids": set(b.get("sids") or [])}
    return base


__all__ = ["FleetSync", "Outgoing", "parse_register"]
