"""Anti-entropy, chunked snapshots and tombstone compaction on a real mosquitto: transports
driven by hand in place of the device's loop, their time from one FakeClock that the tests
advance (a digest is due every ``fleet.digest_interval`` of it)."""

import json
import queue
from types import SimpleNamespace

import numpy as np
import pytest
from mosquitto import Mosquitto, Observer, mqtt_config
from waiting import wait_until

from edge_classifier.comms.fleet import FleetTransport, FleetWork, Wire
from edge_classifier.comms.fleet.replica import Replica, sample_key
from edge_classifier.config import FleetConfig, HeadConfig
from edge_classifier.core.clock import FakeClock
from edge_classifier.learning.state import StateDir

BACKBONE = SimpleNamespace(name="synthetic", identity={"model": "synthetic", "sha256": "0" * 64,
                                                       "embedding_dim": 8, "resize": "crop"})
KEY = "entropy-test-key-0123456789"
PREFIX = "edge_classifier/fleet/g/"
INTERVAL = 60.0
LONG = 60


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path, verbose=False) as running:
        yield running


class Node:
    """A FleetTransport with its own state directory, and a hand-driven loop."""

    def __init__(self, broker, root, name, clock, **fleet):
        self.broker, self.root, self.name, self.clock = broker, root, name, clock
        self.fleet_kw = dict(group="g", key=KEY, digest_interval=INTERVAL, **fleet)
        self.fleet = None
        self.open()

    def open(self):
        config = mqtt_config(self.broker, device_id=self.name).replace(
            fleet=FleetConfig(**self.fleet_kw), head=HeadConfig(max_samples_per_class=10_000))
        self.state = StateDir(self.root)
        self.store = self.state.open_store(BACKBONE.identity, thumbnail_size=16)
        self.work: "queue.Queue" = queue.Queue()
        self.fleet = FleetTransport(config, self.work.put, state=self.state, store=self.store,
                                    backbone=BACKBONE, clock=self.clock)
        return self

    def start(self):
        self.fleet.start()
        return self

    def stop(self):
        if self.fleet is not None:
            self.fleet.stop()
            self.state.close()
            self.fleet = None

    def loop(self):  # what Device.apply_events does with a FleetWork
        while True:
            try:
                event = self.work.get_nowait()
            except queue.Empty:
                return
            assert isinstance(event, FleetWork)
            self.fleet.work()

    def sids(self, name="pear"):
        return set(self.store.sample_ids(name)) if name in self.store.classes else set()


@pytest.fixture
def nodes(broker, tmp_path):
    made = []
    clock = FakeClock()

    def make(name, **fleet):
        node = Node(broker, tmp_path / name, name, clock, **fleet)
        made.append(node)
        return node
    make.clock = clock
    yield make
    for n in made:
        n.stop()


def run(*nodes, until, advance=0.0, timeout=LONG):
    """Drive the nodes' loops (moving the fake clock by ``advance`` each round) until
    ``until()`` holds."""
    clock = nodes[0].clock

    def step():
        clock.advance(advance)
        for n in nodes:
            n.loop()
        return until()
    return wait_until(step, timeout, poll=0.02)


def views(seed):
    return np.random.default_rng(seed).random((2, 8)).astype(np.float32)


def retained(broker):
    """The broker's retained messages under the group: {topic: payload}."""
    with Observer(broker, PREFIX + "#", "marker/x") as seen:
        seen.publish("marker/x", b"1")
        seen.wait_for("marker/x")
        return {m.topic: m.payload for m in seen.messages if m.retain}


def body(payload):
    return json.loads(payload[36:])


def synced(*nodes):
    return all(n.fleet._synced for n in nodes)


def test_a_sample_whose_live_message_was_lost_arrives_through_the_digest(nodes):
    a, b = nodes("one").start(), nodes("two").start()
    assert run(a, b, until=lambda: synced(a, b))
    lost = []
    a.fleet.drop = lambda topic, payload: "/s/" in topic and not lost and not lost.append(topic)
    sid = a.store.add_sample("pear", views(1))
    assert run(a, b, until=lambda: lost and "pear" in b.store.classes)  # the snapshot came
    assert not b.store.has_sample("pear", sid)  # the sample's only message was lost
    assert run(a, b, advance=INTERVAL, until=lambda: b.sids() == {sid})
    # "one" saw the mismatch in two digests running, read the shard again, found its sample
    # missing at the broker and sent it again
    assert a.fleet.stats["fleet_rereads"] >= 1 and a.fleet.stats["fleet_republished"] >= 1
    assert b.fleet.stats["fleet_digests_sent"] >= 2


def test_deleted_samples_leave_no_retained_message_even_before_compaction(nodes, broker):
    # the clears went out before the snapshot with the tombstones: a receiver that saw a clear
    # of a sample still live for it sent the sample again (regression: ~8 % of a bulk delete
    # stayed retained until compaction)
    a, b = nodes("one").start(), nodes("two").start()
    assert run(a, b, until=lambda: synced(a, b))
    sids = [a.store.add_sample("pear", views(i)) for i in range(60)]
    assert run(a, b, until=lambda: b.sids() == set(sids) and not a.fleet._backlog)
    for sid in sids[:50]:
        a.store.remove_sample("pear", sid)
    assert run(a, b, until=lambda: b.sids() == set(sids[50:]))
    assert run(a, b, until=lambda: sum("/s/" in t for t in retained(broker)) == 10)
    assert b.fleet.stats["fleet_healed"] == 0


def test_a_snapshot_of_7200_tombstones_is_sent_in_parts_and_a_newcomer_keeps_the_live_set(
        nodes, broker):
    teacher = nodes("teacher")
    r = teacher.fleet.sync.replica
    cid = r.new_class("pear")
    for i in range(7200):  # deletions made earlier, before this test
        key = sample_key(f"{i + 1:016x}de{i % 256:02x}", cid)
        r.samples[key] = ("teacher", r.tick())
        r.remove(key)
    teacher.fleet.sync.save()
    with Observer(broker) as raw:  # and 20 of their sample messages still retained
        wire = Wire("g", KEY.encode(), "teacher", BACKBONE.identity)
        away = Wire("g", KEY.encode(), "away", BACKBONE.identity)  # a device off since
        raw.publish(*away.digest(int(teacher.clock.wall() * 1000), "share", {},  # yesterday:
                                 [(0, "0" * 16)] * 16), retain=True)  # no compaction yet
        for i in range(20):
            sid = f"{i + 1:016x}de{i % 256:02x}"
            raw.publish(*wire.sample(sid, cid, r.classes[cid], "teacher", 1, views(i), None),
                        retain=True)
    live = {teacher.store.add_sample("pear", views(100 + i)) for i in range(5)}
    teacher.start()
    with Observer(broker, PREFIX + "m/#") as seen:
        assert run(teacher, until=lambda: synced(teacher) and teacher.fleet.sync.parts >= 2
                   and not teacher.fleet._backlog)
        newcomer = nodes("newcomer").start()
        assert run(teacher, newcomer, until=lambda: newcomer.sids() == live
                   and len(newcomer.fleet.sync.replica.tombs) == 7200)
        parts = [m for m in seen.messages if m.payload and "/m/teacher" in m.topic]
    assert len({m.topic for m in parts}) >= 2
    assert all(len(m.payload) <= 256 * 1024 for m in parts)
    assert newcomer.store.classes == ["pear"]
    # the newcomer emptied the retained messages of the removed samples it was sent
    assert run(teacher, newcomer, until=lambda: sum(
        "/s/" in t for t in retained(broker)) == 5, timeout=LONG)


def test_tombstones_everyone_acknowledged_are_compacted_with_their_retained_samples(
        nodes, broker):
    a, b = nodes("one").start(), nodes("two").start()
    assert run(a, b, until=lambda: synced(a, b))
    sids = [a.store.add_sample("pear", views(i)) for i in range(6)]
    assert run(a, b, until=lambda: b.sids() == set(sids))
    # the deletions' clears are lost: the broker keeps the removed samples' messages
    a.fleet.drop = lambda topic, payload: "/s/" in topic and payload == b""
    for sid in sids[:4]:
        a.store.remove_sample("pear", sid)
    assert run(a, b, until=lambda: b.sids() == set(sids[4:]))
    assert len(a.fleet.sync.replica.tombs) == 4 and len(b.fleet.sync.replica.tombs) == 4
    before = retained(broker)
    assert sum("/s/" in t for t in before) == 6
    assert len(body(before[PREFIX + "m/one"])["tombs"]["one"]) == 4
    a.fleet.drop = None
    assert run(a, b, advance=INTERVAL, until=lambda: not a.fleet.sync.replica.tombs
               and not b.fleet.sync.replica.tombs)
    assert run(a, b, until=lambda: sum("/s/" in t for t in retained(broker)) == 2)
    assert run(a, b, until=lambda: all(body(retained(broker)[PREFIX + f"m/{d}"])["tombs"] == {}
                                       for d in ("one", "two")))
    assert a.sids() == b.sids() == set(sids[4:])
    assert a.fleet.stats["fleet_compacted"] == 4


def test_a_forged_digest_is_rejected_and_an_offline_device_holds_compaction_back(
        nodes, broker):
    a, b = nodes("one").start(), nodes("two").start()
    assert run(a, b, until=lambda: synced(a, b))
    sid = a.store.add_sample("pear", views(1))
    assert run(a, b, until=lambda: b.sids() == {sid})
    assert run(a, b, advance=INTERVAL, until=lambda: "digest" in a.fleet.sync.peers["two"])
    b.stop()  # its retained digest stays: it is still waited for
    a.store.remove_sample("pear", sid)
    assert run(a, until=lambda: len(a.fleet.sync.replica.tombs) == 1)
    forger = Wire("g", b"not-the-group-key-at-all", "two", BACKBONE.identity)
    with Observer(broker) as attacker:
        attacker.publish(*forger.digest(1 << 60, "share", {"one": 1 << 60, "two": 1 << 60},
                                        [(0, "0" * 16)] * 16), retain=True)
    assert run(a, advance=INTERVAL, until=lambda: a.fleet.stats["fleet_forged"] >= 1
               and a.fleet.stats["fleet_digests_sent"] >= 3)
    assert len(a.fleet.sync.replica.tombs) == 1  # still waiting for "two"
    b = nodes("two").start()  # back: it merges the tombstone, acknowledges it
    assert run(a, b, advance=INTERVAL, until=lambda: not a.fleet.sync.replica.tombs
               and not b.fleet.sync.replica.tombs)
    assert a.sids() == b.sids() == set()


def test_a_device_back_after_the_horizon_resurrects_nothing_and_keeps_what_the_group_has(
        nodes, broker):
    a, b = nodes("one").start(), nodes("two").start()
    assert run(a, b, until=lambda: synced(a, b))
    s1, s2, s3 = (a.store.add_sample("pear", views(i)) for i in range(3))
    assert run(a, b, advance=INTERVAL, until=lambda: b.sids() == {s1, s2, s3}
               and (b.state.read_fleet() or {}).get("contact"))
    b.stop()
    a.store.remove_sample("pear", s1)  # while "two" is away
    state = StateDir(b.root)  # and "two" is taught offline
    s4 = state.open_store(BACKBONE.identity, thumbnail_size=16).add_sample("pear", views(4))
    state.close()
    a.clock.advance(8 * 86400)  # beyond fleet.horizon_days (7): "two" is no longer waited for
    assert run(a, advance=INTERVAL, until=lambda: a.fleet.stats["fleet_compacted"] == 1)
    assert not a.fleet.sync.replica.tombs and s1 not in {k[:20] for k in
                                                        a.fleet.sync.replica.samples}
    # the broker has the compacted snapshot (else "two" would merge the tombstone: no test)
    assert run(a, until=lambda: body(retained(broker)[PREFIX + "m/one"])["tombs"] == {})
    b.open().start()
    known = dict(b.fleet.sync.replica.samples)  # what "two" remembers of the group
    assert run(a, b, until=lambda: a.sids() == b.sids() == {s2, s3, s4})
    # "two" dropped s1 itself, knowing it was away (one rare failure, 1 of 20 suites, had
    # the right end state with 0 here: the message says which way s1 went instead)
    assert b.fleet.stats["fleet_forgotten"] == 1, dict(
        stats=b.fleet.stats, s1_known=[k for k in known if k.startswith(s1)],
        tombs=list(b.fleet.sync.replica.tombs))
    assert run(a, b, advance=INTERVAL, until=lambda: b.fleet.stats["fleet_digests_sent"] >= 2)
    assert a.sids() == b.sids() == {s2, s3, s4}
    assert not any(s1 in t for t in retained(broker))


def test_replica_compaction_needs_every_acknowledgement_and_drops_the_adds_too():
    r = Replica("a")
    cid = r.new_class("pear")
    k1, k2 = r.add_sample("1" * 20, cid), r.add_sample("2" * 20, cid)
    r.remove(k1)
    stamp = r.tombs[k1][0]
    assert r.compactable({"a": {"a": stamp + 1}, "b": {"a": stamp}}) == []
    assert r.compactable({}) == []
    assert r.compactable({"a": {"a": stamp + 1}, "b": {"a": stamp + 1}}) == [k1]
    assert r.compact([k1]) == [k1]
    assert r.tombs == {} and list(r.samples) == [k2]


def test_snapshot_parts_each_fit_and_together_carry_every_tombstone():
    wire = Wire("g", KEY.encode(), "one", BACKBONE.identity, max_message=16 * 1024)
    r = Replica("one")
    cid = r.new_class("pear")
    for i in range(3000):
        r.remove(sample_key(f"{i + 1:016x}de{i % 256:02x}", cid))
    parts = wire.meta_parts(r.tick(), r.classes, r.tombs, 0)
    assert len(parts) >= 10 and all(len(p) <= 16 * 1024 for _, p in parts)
    opened = [wire.open(t, p) for t, p in parts]
    assert {m.body["parts"] for m in opened} == {len(parts)}
    assert [m.body["part"] for m in opened] == list(range(len(parts)))
    merged = Replica("two")
    for m in opened:
        merged.merge_classes(m.body["classes"])
        merged.merge_tombs(m.body["tombs"])
    assert merged.tombs == r.tombs and merged.classes == r.classes
    with pytest.raises(Exception, match="forged"):  # a part moved to another part's topic:
        # the topic is signed with the body
        wire.open(parts[1][0], parts[2][1])


def test_forged_malformed_and_replayed_digests_are_refused(nodes):
    a = nodes("one")
    wire = Wire("g", KEY.encode(), "two", BACKBONE.identity)
    topic, payload = wire.digest(5, "share", {"two": 4}, [(0, "0" * 16)] * 16)
    assert a.fleet.wire.open(topic, payload).body["ack"] == {"two": 4}
    forged = Wire("g", b"not-the-group-key-at-all", "two", BACKBONE.identity)
    for bad, reason in ((forged.digest(5, "share", {}, [(0, "0" * 16)] * 16), "forged"),
                        (wire.digest(5, "share", {}, [(0, "0" * 16)] * 15), "malformed"),
                        (wire.digest(5, "share", {"../x": 1}, [(0, "0" * 16)] * 16),
                         "malformed")):
        with pytest.raises(Exception) as exc:
            a.fleet.wire.open(*bad)
        assert exc.value.reason == reason
    ae = a.fleet.entropy
    ae.note_digest("two", a.fleet.wire.open(topic, payload).body, 0.0)
    older = wire.digest(4, "share", {"two": 9}, [(0, "0" * 16)] * 16)
    with pytest.raises(ValueError, match="replayed"):
        ae.note_digest("two", a.fleet.wire.open(*older).body, 0.0)
    assert a.fleet.sync.peers["two"]["digest"]["ack"] == {"two": 4}


def test_a_snapshot_counts_as_acknowledged_only_once_all_its_parts_arrived(nodes):
    ae = nodes("one").fleet.entropy
    part = {"seq": 10, "parts": 3, "n": 0}
    assert ae.note_part("two", dict(part, part=0)) == "new"
    assert ae.note_part("two", dict(part, part=0)) == "dup"
    assert ae.note_part("two", dict(part, part=2)) == "new"
    assert "acked" not in ae.sync.peers["two"]
    assert ae.note_part("two", dict(part, part=1)) == "new"
    assert ae.sync.peers["two"]["acked"] == 10
    assert ae.note_part("two", {"seq": 9, "parts": 1, "n": 0, "part": 0}) == "replayed"
    assert ae.acks()["two"] == 10
