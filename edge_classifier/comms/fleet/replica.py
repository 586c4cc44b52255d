"""The fleet's replicated data type: what every device of a group converges to.

Two CRDTs side by side, merged by set union and by "largest stamp wins", so any order of
arrival, and any number of duplicates, gives the same state::

    r = Replica("kitchen")
    cid = r.new_class("apple")                  # a class: a stable id + an LWW name register
    r.add_sample("0189ab...", cid, origin="kitchen")
    r.remove("0189ab...." + "." + cid)          # tombstone: a removed key never comes back
    other.merge_classes(r.classes); other.merge_samples(r.samples, r.tombs)
    r.projection()  # {class_key: Group(name, cids, sids)}: what the local store must hold

* **Samples: a two-phase set (add set + tombstone set).** An element is a key
  ``<sample id>.<class id>`` (sample ids are the store's: 64-bit nanosecond time + 16 random
  bits, unique across devices); elements are immutable, so adding is idempotent, and a
  tombstone wins over its add whatever the order. A tombstone kills its *sample id* under every
  class id: a sample announced again under another class id (by a device that lost
  ``fleet.json``, whose classes then get new ids) stays deleted. Clearing or deleting a class tombstones the
  keys observed at that moment (observed-remove): a sample taught concurrently elsewhere stays.
* **Class names: last-writer-wins registers**, one per class id, stamped ``(hlc, device)``: a
  hybrid logical clock (wall milliseconds, pushed past every stamp seen) with the device id as
  tie-break. ``None`` as the value deletes the class.
* **Compaction.** Each tombstone remembers who wrote it and when, ``(stamp, origin)`` (the
  smaller pair wins when two devices remove one key). Once every device that counts has merged
  a snapshot of ``origin`` stamped after it (:meth:`Replica.compactable`, fed with the devices'
  acknowledgements), nobody can still hold its key live, so the tombstone and every add of its
  sample id are dropped together (:meth:`Replica.compact`): a key is never left live by it.
* **The projection** is a pure function of the state: live classes are grouped by
  :func:`~edge_classifier.core.names.class_key` of their current name (two classes renamed to
  the same name become one local class, shown with the name of the newest write), and each
  group holds the sample ids of its live, untombstoned keys.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

from edge_classifier.core.names import class_key, validate_class_name

Stamp = Tuple[int, str]  # (hybrid logical clock, device id)
Register = Tuple[int, str, Optional[str]]  # (hlc, device, name or None = deleted)
Tomb = Tuple[int, str]  # (hlc of the removal, device that removed it)


def sample_key(sid: str, cid: str) -> str:
    return f"{sid}.{cid}"


def split_key(key: str) -> Tuple[str, str]:
    sid, _, cid = key.partition(".")
    return sid, cid


def valid_sid(sid: object) -> bool:
    return isinstance(sid, str) and len(sid) == 20 and all(c in "0123456789abcdef" for c in sid)


def valid_cid(cid: object) -> bool:
    return isinstance(cid, str) and len(cid) == 16 and all(c in "0123456789abcdef" for c in cid)


def valid_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    sid, _, cid = key.partition(".")
    return valid_sid(sid) and valid_cid(cid)


@dataclass
class Group:
    """One local class of the projection: its display name, the class ids it stands for and
    the sample ids it holds."""

    name: str
    cids: Set[str] = field(default_factory=set)
    sids: Set[str] = field(default_factory=set)


class Replica:
    """The replicated state of one device (see the module's docstring)."""

    def __init__(self, device: str, wall_ms=None):
        self.device = device
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.hlc = 0
        self.classes: Dict[str, Register] = {}
        self.samples: Dict[str, Tuple[str, int]] = {}  # key -> (origin device, hlc)
        self.tombs: Dict[str, Tomb] = {}  # key -> (stamp, device that removed it)

    # -- the clock -----------------------------------------------------------------------------
    def tick(self) -> int:
        """A stamp later than every stamp this replica made or saw."""
        self.hlc = max(self.hlc + 1, self._wall_ms())
        return self.hlc

    def observe(self, hlc: int) -> None:
        if isinstance(hlc, int) and hlc > self.hlc:
            self.hlc = hlc

    # -- local operations ----------------------------------------------------------------------
    def new_class(self, name: str) -> str:
        cid = secrets.token_hex(8)
        self.classes[cid] = (self.tick(), self.device, validate_class_name(name))
        return cid

    def rename(self, cid: str, name: Optional[str]) -> None:
        """Write class ``cid``'s name register (None deletes the class)."""
        self.classes[cid] = (self.tick(), self.device,
                             None if name is None else validate_class_name(name))

    def add_sample(self, sid: str, cid: str, origin: Optional[str] = None) -> str:
        key = sample_key(sid, cid)
        if key not in self.samples:
            self.samples[key] = (origin or self.device, self.tick())
        return key

    def remove(self, key: str) -> None:
        if key not in self.tombs:
            self.tombs[key] = (self.tick(), self.device)

    def dead_sids(self) -> Set[str]:
        """Sample ids with a tombstone under any class id."""
        return {split_key(t)[0] for t in self.tombs}

    def live_keys(self, cids: Iterable[str]) -> List[str]:
        """The untombstoned keys of classes ``cids`` (what a clear observes)."""
        wanted, dead = set(cids), self.dead_sids()
        return sorted(k for k in self.samples
                      if split_key(k)[0] not in dead and split_key(k)[1] in wanted)

    # -- merging -------------------------------------------------------------------------------
    def merge_register(self, cid: str, reg: Register) -> bool:
        """Keep the register with the larger (hlc, device); True if ``reg`` won. (A device never
        writes two values with one stamp; the value breaks such a tie, so merging stays total.)"""
        old = self.classes.get(cid)
        self.observe(reg[0])
        if old is None or _order(reg) > _order(old):
            self.classes[cid] = reg
            return True
        return False

    def merge_classes(self, classes: Dict[str, Register]) -> bool:
        changed = False
        for cid, reg in classes.items():
            changed |= self.merge_register(cid, reg)
        return changed

    def merge_sample(self, key: str, origin: str, hlc: int) -> bool:
        self.observe(hlc)
        if key in self.samples:
            return False
        self.samples[key] = (origin, hlc)
        return True

    def merge_tombs(self, tombs) -> bool:
        """Merge ``{key: (stamp, origin)}`` (or bare keys, stamped ``(0, "")``); the smaller
        pair is kept, so every device keeps the same one. True if a key was new."""
        items = tombs.items() if isinstance(tombs, dict) else ((k, (0, "")) for k in tombs)
        new = False
        for key, tomb in items:
            old = self.tombs.get(key)
            if old is None:
                self.tombs[key], new = tuple(tomb), True
            elif tuple(tomb) < old:
                self.tombs[key] = tuple(tomb)
        return new

    def merge_samples(self, samples: Dict[str, Tuple[str, int]], tombs: Iterable[str]) -> bool:
        changed = False
        for key, (origin, hlc) in samples.items():
            changed |= self.merge_sample(key, origin, hlc)
        return self.merge_tombs(tombs) or changed

    # -- compaction ----------------------------------------------------------------------------
    def compactable(self, acks: Dict[str, Dict[str, int]]) -> List[str]:
        """Tombstones every device of ``acks`` has: ``acks[device][origin]`` is the stamp of
        the newest snapshot of ``origin`` that ``device`` merged, and a snapshot stamped after
        a tombstone carries it. Empty ``acks`` allows nothing."""
        if not acks:
            return []
        return sorted(k for k, (stamp, origin) in self.tombs.items()
                      if origin and all(a.get(origin, -1) > stamp for a in acks.values()))

    def compact(self, keys: Iterable[str]) -> List[str]:
        """Drop tombstones ``keys`` and every add of their sample ids; returns the sample keys
        dropped (their retained messages are to be cleared)."""
        sids = set()
        for key in keys:
            if self.tombs.pop(key, None) is not None:
                sids.add(split_key(key)[0])
        gone = sorted(k for k in self.samples if split_key(k)[0] in sids)
        for k in gone:
            del self.samples[k]
        return gone

    def forget(self, keys: Iterable[str]) -> None:
        """Drop adds that the group no longer holds (a device back after the horizon)."""
        for k in keys:
            self.samples.pop(k, None)

    # -- the projection ------------------------------------------------------------------------
    def live_classes(self) -> Dict[str, Register]:
        return {cid: reg for cid, reg in self.classes.items() if reg[2] is not None}

    def projection(self) -> Dict[str, Group]:
        """``{class_key: Group}``: what the local store holds, the same on every device whose
        replica holds the same state."""
        groups: Dict[str, Group] = {}
        best: Dict[str, tuple] = {}
        for cid, (hlc, dev, name) in sorted(self.live_classes().items()):
            k = class_key(name)
            g = groups.setdefault(k, Group(name))
            if _order((hlc, dev, name)) > best.get(k, (-1, "", False, "")):
                best[k], g.name = _order((hlc, dev, name)), name
            g.cids.add(cid)
        by_cid = {cid: groups[class_key(reg[2])] for cid, reg in self.live_classes().items()}
        dead = self.dead_sids()
        for key in self.samples:
            sid, cid = split_key(key)
            if sid not in dead and cid in by_cid:
                by_cid[cid].sids.add(sid)
        return groups

    def contributions(self) -> Dict[str, int]:
        """Live samples per origin device."""
        counts: Dict[str, int] = {}
        live, dead = self.live_classes(), self.dead_sids()
        for key, (origin, _) in self.samples.items():
            sid, cid = split_key(key)
            if sid not in dead and cid in live:
                counts[origin] = counts.get(origin, 0) + 1
        return counts

    # -- persistence ---------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"hlc": self.hlc, "classes": {c: list(r) for c, r in self.classes.items()},
                "samples": {k: list(v) for k, v in self.samples.items()},
                "tombs": {k: list(t) for k, t in sorted(self.tombs.items())}}

    def load_json(self, data: dict) -> None:
        """Merge what :meth:`to_json` wrote (entries that do not parse are skipped)."""
        self.observe(data.get("hlc", 0))
        for cid, reg in (data.get("classes") or {}).items():
            parsed = parse_register(reg)
            if valid_cid(cid) and parsed is not None:
                self.merge_register(cid, parsed)
        for key, value in (data.get("samples") or {}).items():
            if valid_key(key) and isinstance(value, list) and len(value) == 2 and \
                    isinstance(value[0], str) and isinstance(value[1], int):
                self.merge_sample(key, value[0], value[1])
        tombs = data.get("tombs") or {}
        if isinstance(tombs, list):  # before compaction: bare keys, removed by now at the latest
            tombs = {k: [self.hlc, self.device] for k in tombs}
        self.merge_tombs({k: (t[0], t[1]) for k, t in tombs.items()
                          if valid_key(k) and parse_tomb(t) is not None})


def parse_tomb(t: object) -> Optional[Tomb]:
    """A tombstone's ``[stamp, origin]`` from JSON, or None."""
    if not (isinstance(t, (list, tuple)) and len(t) == 2):
        return None
    stamp, origin = t
    if not (isinstance(stamp, int) and not isinstance(stamp, bool) and 0 <= stamp < 1 << 62
            and isinstance(origin, str) and len(origin) <= 64):
        return None
    return stamp, origin


def _order(reg: Register) -> Tuple[int, str, bool, str]:
    return reg[0], reg[1], reg[2] is not None, reg[2] or ""


def parse_register(reg: object) -> Optional[Register]:
    """A register from JSON (``[hlc, device, name|null]``), its name validated like a local
    class name; None if it is not one."""
    if not (isinstance(reg, (list, tuple)) and len(reg) == 3):
        return None
    hlc, dev, name = reg
    if not (isinstance(hlc, int) and not isinstance(hlc, bool) and 0 <= hlc < 1 << 62
            and isinstance(dev, str) and 0 < len(dev) <= 64):
        return None
    if name is not None:
        try:
            name = validate_class_name(name)
        except (ValueError, TypeError):
            return None
    return hlc, dev, name
