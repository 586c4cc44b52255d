"""The fleet transport on a real mosquitto, driven by hand in place of the device's loop."""

import queue
from types import SimpleNamespace

import numpy as np
import pytest
from mosquitto import Mosquitto, Observer, mqtt_config
from waiting import wait_until

from edge_classifier.comms.fleet import FleetTransport, FleetWork, Wire
from edge_classifier.comms.fleet.replica import Replica
from edge_classifier.config import FleetConfig, HeadConfig
from edge_classifier.learning.state import StateDir

BACKBONE = SimpleNamespace(name="synthetic", identity={"model": "synthetic", "sha256": "0" * 64,
                                                       "embedding_dim": 8, "resize": "crop"})
KEY = "transport-test-key-0123456789"


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path, verbose=False) as running:
        yield running


def transport(broker, tmp_path, name):
    config = mqtt_config(broker, device_id=name).replace(
        fleet=FleetConfig(group="g", key=KEY), head=HeadConfig(max_samples_per_class=5000))
    state = StateDir(tmp_path / name)
    store = state.open_store(BACKBONE.identity, thumbnail_size=16)
    work: "queue.Queue" = queue.Queue()
    fleet = FleetTransport(config, work.put, state=state, store=store, backbone=BACKBONE)

    def loop_once():  # what Device.apply_events does with a FleetWork
        while True:
            try:
                event = work.get_nowait()
            except queue.Empty:
                return
            assert isinstance(event, FleetWork)
            fleet.work()
    return fleet, store, state, loop_once


def test_a_newcomer_receives_more_retained_samples_than_the_broker_queues_per_client(
        broker, tmp_path):
    # mosquitto queues at most 1000 messages per client beyond those in flight: a newcomer
    # subscribing to all samples at once stopped at about 1020 of these (the regression);
    # it now subscribes shard by shard.
    n = 1300
    wire = Wire("g", KEY.encode(), "teacher", BACKBONE.identity)
    teacher = Replica("teacher")
    cid = teacher.new_class("apple")
    rng = np.random.default_rng(0)
    with Observer(broker) as seen:
        for i in range(n):
            sid = f"{i + 1:016x}be{i % 256:02x}"  # the last digit spreads them over shards
            topic, payload = wire.sample(sid, cid, teacher.classes[cid], "teacher", i + 1,
                                         rng.random((1, 8)).astype(np.float32), None)
            seen.client.publish(topic, payload, qos=1, retain=True)
        seen.publish("done", b"x")  # waits for the broker's acknowledgement of the last one
    fleet, store, state, loop_once = transport(broker, tmp_path, "newcomer")
    fleet.start()
    try:
        assert wait_until(lambda: loop_once() or len(store) == n, 120), len(store)
        assert store.classes == ["apple"]
    finally:
        fleet.stop()
        state.close()


def test_two_transports_share_a_sample_and_its_deletion(broker, tmp_path):
    one = transport(broker, tmp_path, "one")
    two = transport(broker, tmp_path, "two")
    for fleet, *_ in (one, two):
        fleet.start()
    try:
        sid = one[1].add_sample("pear", np.ones((2, 8), np.float32))
        assert wait_until(lambda: one[3]() or two[3]() or two[1].has_sample("pear", sid), 60)
        two[1].remove_sample("pear", sid)
        assert wait_until(lambda: one[3]() or two[3]() or not one[1].has_sample("pear", sid),
                          60)
        view = one[0].view()
        assert view["group"] == "g" and {d["device"] for d in view["devices"]} >= {"one"}
    finally:
        for fleet, _, state, _ in (one, two):
            fleet.stop()
            state.close()
