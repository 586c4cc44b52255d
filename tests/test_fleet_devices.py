"""Device processes (``edge-classifier run``) learning together through one real mosquitto,
taught by MQTT commands, with replay sources; every wait is for a condition, never a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from mosquitto import Mosquitto, Observer, free_port
from waiting import wait_until

from edge_classifier.learning.state import StateDir
from edge_classifier.comms.fleet.wire import ROOT, Wire

KEY = "fleet-test-key-0123456789abcdef"
LONG = 120.0  # seconds: an upper bound for device processes on a loaded 2-core machine


class FleetDevice:
    """One ``edge-classifier run`` process of the group (``start``, ``stop``, ``kill``)."""

    def __init__(self, tmp_path, broker, name, photo, *, resize="crop", mode="share",
                 group="g1", key=KEY, web=None, model=""):
        self.name, self.broker = name, broker
        self.state = tmp_path / f"state-{name}"
        self.log = tmp_path / f"{name}.log"
        self.config = tmp_path / f"{name}.toml"
        self.config.write_text(f"""
device_id = "{name}"
state_dir = "{self.state}"
keyboard = "off"
[source]
kind = "replay"
path = "{photo}"
fps = 8
[model]
name = "{model}"
threads = 1
resize = "{resize}"
[mqtt]
broker = "{broker.url}"
commands = true
discovery = false
keepalive = 5
reconnect_min = 0.05
reconnect_max = 0.5
prediction_interval = 0.0
[fleet]
group = "{group}"
mode = "{mode}"
key = "{key}"
""" + (f'[web]\nlisten = "127.0.0.1:{web}"\n' if web else ""))
        self.process = None

    def start(self):
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge_classifier", "run", "-v", "--config",
                 str(self.config)], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(LONG)
        self.process = None

    def kill(self):
        self.process.kill()
        self.process.wait(LONG)
        self.process = None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def contents(self):
        """{class: sorted sample ids} on disk, read without the lock (None while unreadable)."""
        try:
            with StateDir(self.state, write=False) as state:
                store = state.open_store()
                return {n: sorted(store.sample_ids(n)) for n in store.classes}
        except Exception:  # noqa: BLE001 - being written right now
            return None

    def command(self, seen, action, **payload):
        seen.publish(f"edge_classifier/{self.name}/cmd/{action}", json.dumps(payload))


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path) as running:
        yield running


@pytest.fixture
def fleet(tmp_path, broker, sample):
    made = []

    def make(name, photo="bird.bmp", **kw):
        d = FleetDevice(tmp_path, broker, name, sample(photo), **kw)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()


def wait_online(seen, *devices):
    """Until each device's MQTT link is up: its state follows the subscriptions' acks."""
    for d in devices:
        assert seen.wait_until(lambda msgs, d=d: any(
            m.topic == f"edge_classifier/{d.name}/state" for m in msgs), LONG), d.text()


def teach(seen, device, name, count):
    mark = seen.mark()
    device.command(seen, "capture", **{"class": name, "count": count, "id": f"t-{name}"})
    def done(msgs):
        for m in msgs[mark:]:
            if m.topic == f"edge_classifier/{device.name}/cmd/result":
                r = json.loads(m.payload)
                if r.get("id") == f"t-{name}":
                    assert r.get("ok"), r
                    return True
        return False
    assert seen.wait_until(done, LONG), device.text()


def same(devices, want=None):
    got = [d.contents() for d in devices]
    return got[0] is not None and all(g == got[0] for g in got) and \
        (want is None or want(got[0]))


def labels_seen(seen, device, mark=0):
    out = set()
    for m in seen.messages[mark:]:
        if m.topic == f"edge_classifier/{device.name}/prediction":
            out.add(json.loads(m.payload).get("label"))
    return out


def test_captures_on_one_appear_on_the_others_and_a_newcomer_gets_them_all(fleet, broker):
    a, b, c = fleet("devA", "bird.bmp"), fleet("devB", "cat.bmp"), fleet("devC", "cat.bmp")
    with Observer(broker, "edge_classifier/#") as seen:
        for d in (a, b, c):
            d.start()
        wait_online(seen, a, b, c)
        teach(seen, a, "bird", 3)
        teach(seen, b, "cat", 3)
        assert wait_until(lambda: same((a, b, c), lambda s: len(s.get("bird", [])) == 3
                                       and len(s.get("cat", [])) == 3), LONG), \
            (a.contents(), b.contents(), c.contents())
        mark = len(seen.messages)
        # devC sees cat frames and knows "bird" only through the fleet: both are predicted
        assert seen.wait_until(lambda msgs: "cat" in labels_seen(seen, c, mark), LONG)
        newcomer = fleet("devD", "bird.bmp").start()
        assert wait_until(lambda: same((a, newcomer)), LONG), newcomer.text()
        assert seen.wait_until(lambda msgs: "bird" in labels_seen(seen, newcomer, mark), LONG)
        assert sum(len(v) for v in newcomer.contents().values()) == 6


def test_offline_device_catches_up_and_concurrent_edits_converge(fleet, broker):
    a, b = fleet("devA", "bird.bmp"), fleet("devB", "cat.bmp")
    with Observer(broker, "edge_classifier/#") as seen:
        a.start(), b.start()
        wait_online(seen, a, b)
        teach(seen, a, "bird", 2)
        teach(seen, b, "cat", 2)
        assert wait_until(lambda: same((a, b), lambda s: len(s) == 2 and
                                       all(len(v) == 2 for v in s.values())), LONG)
        b.stop()
        teach(seen, a, "bird", 2)  # taught while devB is away
        a.command(seen, "rename_class", **{"class": "cat", "to": "kitten"})
        b.start()
        assert wait_until(lambda: same((a, b), lambda s: len(s.get("bird", [])) == 4
                                       and "kitten" in s), LONG), (a.contents(), b.contents())
        # concurrent: both rename "bird", one deletes a sample of "kitten"
        victim = a.contents()["kitten"][0]
        a.command(seen, "rename_class", **{"class": "bird", "to": "robin"})
        b.command(seen, "rename_class", **{"class": "bird", "to": "sparrow"})
        b.command(seen, "delete_sample", **{"class": "kitten", "sample": victim})
        assert wait_until(lambda: same((a, b), lambda s: victim not in s.get("kitten", [victim])
                                       and ("robin" in s) != ("sparrow" in s)), LONG), \
            (a.contents(), b.contents())


def test_the_studio_shows_the_group(fleet, broker):
    port = free_port()
    a, b = fleet("devA", "bird.bmp", web=port), fleet("devB", "cat.bmp")
    with Observer(broker, "edge_classifier/+/state", "edge_classifier/+/cmd/result") as seen:
        a.start(), b.start()
        wait_online(seen, a, b)
        teach(seen, b, "cat", 2)

        def group():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/fleet", timeout=5) as r:
                    view = json.load(r)
            except OSError:
                return None
            devices = {d["device"]: d for d in view.get("devices", [])}
            return view if devices.get("devB", {}).get("samples") == 2 and \
                devices["devB"]["online"] and devices["devA"]["this"] else None
        assert wait_until(group, LONG), a.text()
        assert group()["group"] == "g1"
        b.stop()
        assert wait_until(lambda: not {d["device"]: d for d in (group_raw(port) or {}).get(
            "devices", [])}.get("devB", {"online": True})["online"], LONG)


def group_raw(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/fleet", timeout=5) as r:
            return json.load(r)
    except OSError:
        return None


def test_a_device_with_another_crop_ignores_the_group_and_keeps_its_own(fleet, broker):
    a, odd = fleet("devA", "bird.bmp"), fleet("devS", "cat.bmp", resize="squash")
    with Observer(broker, "edge_classifier/#") as seen:
        a.start(), odd.start()
        wait_online(seen, a, odd)
        teach(seen, odd, "cat", 1)
        teach(seen, a, "bird", 2)
        assert wait_until(lambda: "another backbone" in odd.text(), LONG)
        assert wait_until(lambda: "another backbone" in a.text(), LONG)
        assert list(odd.contents()) == ["cat"] and list(a.contents()) == ["bird"]


def test_follow_receives_only_publish_sends_only_and_another_model_ignores_the_group(
        fleet, broker):
    hub = fleet("devA", "bird.bmp")
    follower = fleet("devF", "cat.bmp", mode="follow")
    sender = fleet("devP", "cat.bmp", mode="publish")
    other = fleet("devM", "cat.bmp", model="mobilenet_v1_0.25_128_quant")
    with Observer(broker, "edge_classifier/#") as seen:
        for d in (hub, follower, sender, other):
            d.start()
        wait_online(seen, hub, follower, sender, other)
        teach(seen, hub, "bird", 2)
        teach(seen, follower, "kitten", 1)  # a follower's own samples stay its own
        teach(seen, sender, "cat", 2)
        teach(seen, other, "tabby", 1)
        # the hub and the follower get the sender's cats; the sender gets nothing back
        assert wait_until(lambda: len((hub.contents() or {}).get("cat", [])) == 2
                          and len((follower.contents() or {}).get("cat", [])) == 2, LONG), \
            (hub.contents(), follower.contents())
        assert wait_until(lambda: len((follower.contents() or {}).get("bird", [])) == 2, LONG)
        teach(seen, hub, "bird", 1)  # taught after the sender saw the group's traffic
        assert wait_until(lambda: len((follower.contents() or {}).get("bird", [])) == 3, LONG)
        assert "kitten" not in hub.contents() and "kitten" not in sender.contents()
        assert sorted(sender.contents()) == ["cat"]
        # a device with another model keeps its own and says so
        assert wait_until(lambda: "another backbone" in other.text(), LONG)
        assert list(other.contents()) == ["tabby"] and "tabby" not in hub.contents()


def test_forged_and_replayed_messages_are_rejected(fleet, broker, tmp_path):
    a, b = fleet("devA", "bird.bmp"), fleet("devB", "cat.bmp")
    with Observer(broker, f"{ROOT}/#", "edge_classifier/+/state",
                  "edge_classifier/+/cmd/result") as seen:
        a.start(), b.start()
        wait_online(seen, a, b)
        teach(seen, a, "bird", 1)
        assert wait_until(lambda: same((a, b), lambda s: len(s.get("bird", [])) == 1), LONG)
        # devA's snapshot naming "bird" (it goes out after the sample, which carries the
        # class too: the sample can reach devB before the snapshot reaches this observer)
        def snapshot_with_bird():
            return [m for m in list(seen.messages)
                    if m.topic == f"{ROOT}/g1/m/devA" and b'"bird"' in m.payload]
        assert wait_until(snapshot_with_bird, LONG)
        old_meta = snapshot_with_bird()[-1]
        a.command(seen, "delete_class", **{"class": "bird"})
        assert wait_until(lambda: same((a, b), lambda s: "bird" not in s), LONG)
        # an attacker without the key, then one replaying devA's older snapshot
        forger = Wire("g1", b"not-the-group-key-at-all", "devA", None)
        topic, payload = forger.meta(1 << 60, {"0" * 16: [1 << 59, "devA", "evil"]}, [], 0)
        seen.publish(topic, payload, retain=False)
        seen.publish(old_meta.topic, old_meta.payload, retain=False)
        seen.publish(f"{ROOT}/g1/s/1/{'1' * 20}.{'2' * 16}", b"ECF1" + b"x" * 40, retain=False)
        assert wait_until(lambda: "forged" in b.text() and "replayed" in b.text(), LONG), \
            b.text()
        assert "not-the-group-key" not in b.text() and KEY not in b.text()
        teach(seen, a, "cat", 1)  # the link still works, and nothing came back
        assert wait_until(lambda: same((a, b), lambda s: list(s) == ["cat"]), LONG), \
            (a.contents(), b.contents())


def test_kill_9_mid_sync_and_a_broker_restart_lose_and_duplicate_nothing(fleet, broker):
    a, b = fleet("devA", "bird.bmp"), fleet("devB", "cat.bmp")
    with Observer(broker, "edge_classifier/#") as seen:
        a.start(), b.start()
        wait_online(seen, a, b)
        teach(seen, a, "bird", 30)
        assert wait_until(lambda: len((b.contents() or {}).get("bird", [])) >= 1, LONG)
        b.kill()  # mid-sync, most likely: 30 samples arrive in several batches
        b.start()
        assert wait_until(lambda: same((a, b), lambda s: len(s.get("bird", [])) == 30), LONG), \
            (a.contents(), b.contents())
        broker.restart()  # no persistence: the retained store is gone
        seen.wait_subscribed(LONG)
        c = fleet("devC", "cat.bmp").start()  # learns it all from the devices' republishing
        assert wait_until(lambda: same((a, b, c), lambda s: len(s.get("bird", [])) == 30), LONG), \
            (a.contents(), c.contents())
