"""Two devices' stores kept in step through the real wire format (signed messages), without
a broker: the order and duplication of messages do not matter, deletes and renames propagate,
and a kill between the steps of a sync loses and duplicates nothing."""

import numpy as np
import pytest

from edge_classifier.comms.fleet.sync import FleetSync
from edge_classifier.comms.fleet.wire import Wire
from edge_classifier.errors import FleetMessageError
from edge_classifier.learning.state import StateDir

BACKBONE = {"model": "synthetic", "sha256": "0" * 64, "embedding_dim": 8, "resize": "crop"}
KEY = b"a group secret of some length"


class Node:
    def __init__(self, root, name, backbone=BACKBONE, limit=None, max_classes=None):
        self.root, self.name, self.limit, self.max_classes = root, name, limit, max_classes
        self.backbone = backbone
        self.open()

    def open(self):
        self.state = StateDir(self.root)
        self.store = self.state.open_store(self.backbone, thumbnail_size=32,
                                           max_classes=self.max_classes)
        self.sync = FleetSync(self.state, self.store, self.name,
                              max_samples_per_class=self.limit)
        self.wire = Wire("g", KEY, self.name, self.backbone)

    def close(self):
        self.state.close()

    def outbox(self, out):
        msgs = []
        for key in out.samples:
            m = self.sync.sample_message(self.wire, key)
            if m is not None:
                msgs.append(m)
        if out.meta:
            r = self.sync.replica
            msgs.append(self.wire.meta(self.sync.next_seq(), r.classes, r.tombs, 0))
        return msgs

    def round(self, received=()):
        opened = [self.wire.open(t, p) for t, p in received]
        return self.outbox(self.sync.sync(opened))

    def contents(self):
        return {n: sorted(self.store.sample_ids(n)) for n in self.store.classes}


def views(seed):
    return np.random.default_rng(seed).random((2, 8)).astype(np.float32)


def thumb():
    return np.full((40, 50, 3), 128, np.uint8)


@pytest.fixture
def nodes(tmp_path):
    made = []

    def make(name, **kw):
        node = Node(tmp_path / name, name, **kw)
        made.append(node)
        return node
    yield make
    for n in made:
        n.close()


def exchange(*nodes, rounds=3):
    """Every node's messages to every other node, until nothing more is sent."""
    pending = {n.name: n.round() for n in nodes}
    for _ in range(rounds):
        nxt = {}
        for n in nodes:
            got = [m for other in nodes if other is not n for m in pending[other.name]]
            nxt[n.name] = n.round(got)
        pending = nxt


def test_a_sample_taught_on_one_is_stored_on_the_other_with_its_id(nodes):
    a, b = nodes("a"), nodes("b")
    sid = a.store.add_sample("apple", views(1), thumb())
    exchange(a, b)
    assert b.contents() == {"apple": [sid]}
    got = b.store.views("apple", sid)
    assert np.allclose(got, a.store.views("apple", sid), atol=0.5 / 255 + 1e-6)
    assert b.store.thumbnail_path("apple", sid) is not None


def test_deletes_renames_and_clears_propagate(nodes):
    a, b = nodes("a"), nodes("b")
    s1 = a.store.add_sample("apple", views(1))
    s2 = a.store.add_sample("apple", views(2))
    s3 = a.store.add_sample("pear", views(3))
    exchange(a, b)
    b.store.remove_sample("apple", s1)
    b.store.rename_class("pear", "plum")
    exchange(a, b)
    assert a.contents() == b.contents() == {"apple": [s2], "plum": [s3]}
    a.store.clear_class("apple")
    a.store.delete_class("plum")
    exchange(a, b)
    assert a.contents() == b.contents() == {"apple": []}


def test_concurrent_renames_and_deletes_converge(nodes):
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    s1 = a.store.add_sample("apple", views(1))
    s2 = a.store.add_sample("pear", views(2))
    exchange(a, b, c)
    a.store.rename_class("apple", "red")
    b.store.rename_class("apple", "green")
    b.store.remove_sample("pear", s2)
    c.store.add_sample("pear", views(9))
    exchange(a, b, c)
    assert a.contents() == b.contents() == c.contents()
    assert list(a.contents()) in (["red", "pear"], ["green", "pear"], ["pear", "red"],
                                  ["pear", "green"])
    assert s2 not in a.contents()["pear"] and len(a.contents()["pear"]) == 1
    assert s1 in next(v for k, v in a.contents().items() if k != "pear")


def test_two_classes_renamed_to_one_name_become_one_class_everywhere(nodes):
    a, b = nodes("a"), nodes("b")
    s1 = a.store.add_sample("apple", views(1))
    s2 = b.store.add_sample("pear", views(2))
    exchange(a, b)
    a.store.rename_class("apple", "fruit")
    b.store.rename_class("pear", "Fruit")
    exchange(a, b)
    assert a.contents() == b.contents()
    assert sorted(next(iter(a.contents().values()))) == sorted([s1, s2])


def test_messages_in_any_order_and_twice_give_the_same_store(nodes):
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    msgs = []
    for i in range(4):
        a.store.add_sample("apple" if i % 2 else "pear", views(i))
        msgs += a.round()
    a.store.remove_sample("pear", a.store.sample_ids("pear")[0])
    a.store.rename_class("apple", "fig")
    msgs += a.round()
    b.round(msgs + msgs)
    c.round(list(reversed(msgs)))
    assert a.contents() == b.contents() == c.contents()


def test_forged_unsigned_and_other_group_messages_are_refused_and_change_nothing(nodes):
    a, b = nodes("a"), nodes("b")
    a.store.add_sample("apple", views(1))
    (topic, payload), = [m for m in a.round() if "/s/" in m[0]]
    forged = payload[:-5] + b"xxxxx"
    other = Wire("g", b"another group key, long enough", "a", BACKBONE)
    for t, p, reason in [(topic, forged, "forged"), (topic, payload[36:], "unsigned"),
                         (topic.replace("/g/", "/h/"), payload, "other_group"),
                         (topic, other.hello("x")[1], "forged"),
                         (topic, payload + b"x" * (300 * 1024), "oversized")]:
        with pytest.raises(FleetMessageError) as caught:
            b.wire.open(t, p)
        assert caught.value.reason == reason
    assert b.contents() == {}


def test_a_device_with_another_backbone_ignores_the_groups_samples(nodes):
    a = nodes("a")
    b = nodes("b", backbone=dict(BACKBONE, resize="squash"))
    mine = b.store.add_sample("cat", views(5))
    a.store.add_sample("apple", views(1))
    for topic, payload in a.round():
        with pytest.raises(FleetMessageError) as caught:
            b.wire.open(topic, payload)
        assert caught.value.reason == "other_backbone"
    assert b.contents() == {"cat": [mine]}


def test_per_class_limit_and_max_classes_hold_on_the_receiver(nodes):
    a = nodes("a")
    b = nodes("b", limit=2, max_classes=1)
    for i in range(4):
        a.store.add_sample("apple", views(i))
    a.store.add_sample("pear", views(9))
    exchange(a, b)
    assert list(b.contents()) == ["apple"] and len(b.contents()["apple"]) == 2
    assert b.sync.stats["refused_classes"] >= 1 and b.sync.stats["over_limit"] >= 1
    assert len(a.contents()["apple"]) == 4  # nothing of the sender's was deleted


def test_a_kill_after_the_store_changed_but_before_base_was_saved_duplicates_nothing(nodes):
    a, b = nodes("a"), nodes("b")
    sid = a.store.add_sample("apple", views(1))
    msgs = a.round()
    saves = []
    original = b.state.write_fleet

    def die_on_second_save(data):
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # a kill -9 after the store was written
        original(data)
    b.state.write_fleet = die_on_second_save
    with pytest.raises(KeyboardInterrupt):
        b.round(msgs)
    b.close()
    b.open()  # the restart
    out = b.round()
    assert b.contents() == {"apple": [sid]}
    assert not [m for m in out if "/s/" in m[0]]  # not taken for a sample taught there
    assert set(b.sync.replica.samples) == set(a.sync.replica.samples)


def test_a_kill_before_anything_was_saved_loses_nothing_on_restart(nodes):
    a, b = nodes("a"), nodes("b")
    exchange(a, b)
    sid = b.store.add_sample("apple", views(3))  # taught, then killed before the fleet saw it
    b.close()
    b.open()
    exchange(a, b)
    assert a.contents() == b.contents() == {"apple": [sid]}


def test_a_device_that_lost_its_fleet_state_does_not_bring_back_a_deleted_sample(nodes):
    """fleet.json deleted (or restored from an old backup): the device's classes get new ids,
    so it announces its samples again under other keys; a sample the user deleted elsewhere
    must stay deleted (it came back on every device before)."""
    a, b = nodes("a"), nodes("b")
    for i in range(3):
        a.store.add_sample("cat", views(i), thumb())
    exchange(a, b)
    victim = b.contents()["cat"][0]
    b.store.remove_sample("cat", victim)
    a.close()
    (a.root / "fleet.json").unlink()
    a.open()
    a.store.add_sample("cat", views(30), thumb())
    exchange(a, b)
    assert a.contents() == b.contents()
    assert victim not in a.contents()["cat"] and len(a.contents()["cat"]) == 3
