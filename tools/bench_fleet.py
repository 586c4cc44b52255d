#!/usr/bin/env python3
"""Benchmark: devices of one fleet group on a local mosquitto.

- Capture to head: a capture on device A (a Capture event, as a button press makes) until the
  sample is in the refitted head of devices B and C; median and p95 (target <= 1 s, 3 devices).
- Bytes on the wire per sample (the signed message: quantised views + thumbnail).
- The broker's retained store after ``--samples`` samples in a group of 3 (what a late joiner
  receives: one message per live sample, one snapshot and one availability per device).
- Deletes: ``--deletes`` of those samples removed on A; the broker's retained store once the
  others have the deletions (tombstones in the snapshots), and again once every device has
  acknowledged them and compacted (``--digest-interval`` seconds between digests, 5 for the
  benchmark), and the digest traffic per minute (digests of the 4 devices, the newcomer
  included, measured over 4 quiet intervals and scaled to the default interval of 60 s).
- A new device syncing all of them: from its start to every sample in its store and head
  (target <= 30 s for 2,000).
- A larger fleet: ``--followers`` lightweight follow-only subscribers (paho clients checking
  every message's signature, as a follow device does before merging) while A is taught
  ``--burst`` samples; CPU seconds of the broker and of this process (the devices) per sample.

The devices are real :class:`Device` objects (each its own backbone, replay of the sample
photos at 5 fps) in this process. Prints one JSON object.

    python tools/bench_fleet.py [--captures 20] [--samples 2000] [--deletes 1000]
                                [--digest-interval 5] [--followers 20] [--burst 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import Broker, decoded_frames, memory_source

from edge_classifier.backbone.model import Backbone
from edge_classifier.comms import events as ev
from edge_classifier.comms.fleet.wire import Wire
from edge_classifier.config import Config, FleetConfig, HeadConfig, MqttConfig, SourceConfig
from edge_classifier.device.loop import Device
from edge_classifier.errors import FleetMessageError

KEY = "bench-fleet-key-0123456789abcdef"
CLASSES = ["bird", "cat", "hot dog", "flower"]


def config(name, url, limit, interval=60.0):
    return Config(device_id=name, keyboard="off", source=SourceConfig(kind="replay", path="-", fps=5),
                  head=HeadConfig(max_samples_per_class=limit),
                  mqtt=MqttConfig(broker=url, discovery=False, reconnect_min=0.05,
                                  reconnect_max=0.5, stats_interval=3600),
                  fleet=FleetConfig(group="bench", key=KEY, digest_interval=interval))


def capped(frames, fps=5.0):
    """The pre-decoded photos at ``fps`` (a camera's pace, so three devices share two cores)."""
    source = memory_source(frames)
    source.fps = fps
    return source


class Running:
    def __init__(self, name, url, root, frames, limit, interval=60.0):
        backbone = Backbone.from_name(None, num_threads=1)
        self.device = Device(config(name, url, limit, interval), backbone=backbone,
                             source=capped(frames), state_dir=root / name)
        self.head_times = {}  # sid -> time.monotonic() when first in the refitted head
        self.watch = set()
        original = self.device._changed

        def changed():
            original()
            now = time.monotonic()
            for sid in list(self.watch):
                if any(self.device.store.has_sample(n, sid) for n in self.device.store.classes):
                    self.head_times[sid] = now
                    self.watch.discard(sid)
        self.device._changed = changed
        self.thread = threading.Thread(target=self.device.run, daemon=True)
        self.thread.start()

    def count(self):
        try:
            return sum(self.device.store.counts().values())
        except Exception:  # noqa: BLE001 - mid-write
            return 0

    def stop(self):
        self.device.stop()
        self.thread.join(60)
        self.device.close()


def progress(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def ids(device, name):
    """The sample ids of a class, read from this thread while the loop may be writing."""
    try:
        return set(device.store.sample_ids(name))
    except Exception:  # noqa: BLE001 - mid-write: read again next time
        return set()


def wait(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)  # a benchmark polls; tests never sleep
    raise SystemExit(f"timed out waiting for {what}")


def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def retained_size(broker_port, prefix):
    """(messages, bytes) retained under ``prefix``: what a new subscriber receives. Read
    subscription by subscription (metadata, then each sample shard), a marker after each, as
    a device does: one subscription to all would hit the broker's per-client queue."""
    import paho.mqtt.client as paho
    got, done = [], threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-retained")
    marker = "bench/retained-marker"  # outside the group: the devices never see it
    parts = [prefix + k + "/#" for k in ("m", "d", "a", "h")] + [f"{prefix}s/{x}/#"
                                                          for x in "0123456789abcdef"]

    def on_message(c, u, m):
        if m.topic == marker:
            done.set()
        elif m.retain:
            got.append(len(m.payload) + len(m.topic))
    client.on_message = on_message
    client.connect("127.0.0.1", broker_port)
    client.subscribe(marker, qos=1)  # sent before the others, on the same connection
    client.loop_start()
    for topic in parts:
        done.clear()
        client.subscribe(topic, qos=1)
        client.publish(marker, b"x", qos=1)
        done.wait(60)
    client.disconnect()
    client.loop_stop()
    return len(got), sum(got)


def followers(n, port, wire_for):
    import paho.mqtt.client as paho
    from paho.mqtt.subscribeoptions import SubscribeOptions
    clients, counts = [], [0] * n
    for i in range(n):
        wire = wire_for(f"follower{i}")
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-follower-{i}",
                        protocol=paho.MQTTv5)

        def on_message(cl, u, m, i=i, wire=wire):
            try:
                wire.open(m.topic, bytes(m.payload))
                counts[i] += 1
            except FleetMessageError:
                pass
        c.on_message = on_message
        # live messages only (the retained set is what a newcomer gets, measured above)
        c.on_connect = lambda cl, u, f, r, p, w=wire: cl.subscribe(
            w.subscription, options=SubscribeOptions(qos=0, retainHandling=2))
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(c)
    return clients, counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--captures", type=int, default=20)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--deletes", type=int, default=1000)
    p.add_argument("--digest-interval", type=float, default=5.0)
    p.add_argument("--followers", type=int, default=20)
    p.add_argument("--burst", type=int, default=200)
    args = p.parse_args()
    frames = decoded_frames()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = Broker(root).start()
        limit = args.samples
        devs = [Running(n, broker.url, root, frames, limit, args.digest_interval)
                for n in ("devA", "devB", "devC")]
        a, others = devs[0], devs[1:]
        wait(lambda: all(d.device.fleet.stats["fleet_connected"] for d in devs), 60, "connect")
        # 1. capture -> in the others' heads
        progress("captures")
        lat = []
        for i in range(args.captures):
            before = ids(a.device, "bird")
            t0 = time.monotonic()
            a.device.post(ev.Capture(origin="bench", class_name="bird"))
            wait(lambda: ids(a.device, "bird") - before, 30, "the capture")
            sid = (ids(a.device, "bird") - before).pop()
            for d in others:
                d.watch.add(sid)
            wait(lambda: all(sid in d.head_times for d in others), 30, "the sample elsewhere")
            lat += [d.head_times[sid] - t0 for d in others]
        lat.sort()
        out["capture_to_other_heads_s"] = {"median": round(statistics.median(lat), 3),
                                           "p95": round(lat[int(0.95 * (len(lat) - 1))], 3),
                                           "n": len(lat), "target": 1.0}
        # 2. bulk: samples taught on A (stored directly, as train or many captures would)
        progress("bulk")
        rng = np.random.default_rng(0)
        with Backbone.from_name(None, num_threads=1) as probe:  # not the loop's interpreter
            base = [probe.embed(f) for f in frames]
        thumb = frames[0]
        sent0, bytes0 = a.device.fleet.stats["fleet_sent"], a.device.fleet.stats[
            "fleet_bytes_sent"]
        n_bulk = args.samples - args.captures
        todo = []
        for i in range(n_bulk):
            e = base[i % len(base)] * (1 + 0.05 * rng.standard_normal(len(base[0])))
            todo.append((CLASSES[i % len(CLASSES)], np.stack([e, e[::-1]]).astype(np.float32)))
        done = threading.Event()

        def teach():  # on the loop thread, like every store write
            for name, v in todo:
                a.device.store.add_sample(name, v, thumb)
            a.device.learner.changed()
            done.set()

        doomed = []

        def delete():  # on the loop thread too
            for name, sid in doomed:
                a.device.store.remove_sample(name, sid)
            a.device.learner.changed()

        class Teach(ev.Event):
            pass

        class Delete(ev.Event):
            pass
        a.device.studio.handles = (lambda orig: lambda e: isinstance(e, (Teach, Delete))
                                   or orig(e))(a.device.studio.handles)
        a.device.studio.apply = (lambda orig: lambda e: (teach() or {}) if isinstance(e, Teach)
                                 else (delete() or {}) if isinstance(e, Delete)
                                 else orig(e))(a.device.studio.apply)
        t0 = time.monotonic()
        a.device.post(Teach(origin="bench"))
        wait(lambda: all(d.count() >= args.samples for d in others), 600, "the bulk elsewhere")
        out["bulk_to_two_others_s"] = round(time.monotonic() - t0, 2)
        sent = a.device.fleet.stats["fleet_sent"] - sent0
        out["bytes_per_sample"] = round((a.device.fleet.stats["fleet_bytes_sent"] - bytes0)
                                        / max(1, sent))
        msgs, size = retained_size(broker.port, "edge_classifier/fleet/bench/")
        out["retained_after_samples"] = {"samples": args.samples, "messages": msgs,
                                         "bytes": size}
        # 3. a newcomer
        progress("newcomer")
        t0 = time.monotonic()
        new = Running("devD", broker.url, root, frames, limit)
        wait(lambda: new.count() >= args.samples and not new.device.events.qsize(), 600,
             "the newcomer")
        out["newcomer_sync_s"] = {"samples": args.samples,
                                  "seconds": round(time.monotonic() - t0, 2), "target": 30.0}
        # 3b. deletes, then compaction once every device acknowledged them (the newcomer
        # too: a device that stopped would hold compaction back for fleet.horizon_days)
        group = devs + [new]
        progress("deletes")
        for name in CLASSES:
            doomed += [(name, sid) for sid in sorted(ids(a.device, name))]
        doomed[:] = doomed[:args.deletes]
        left = args.samples - len(doomed)
        t0 = time.monotonic()
        a.device.post(Delete(origin="bench"))
        wait(lambda: all(d.count() == left for d in group), 600, "the deletes elsewhere")
        out["deletes_to_two_others_s"] = round(time.monotonic() - t0, 2)
        msgs, size = retained_size(broker.port, "edge_classifier/fleet/bench/")
        out["retained_after_deletes"] = {
            "deleted": len(doomed), "live": left, "messages": msgs, "bytes": size,
            "tombstones": len(a.device.fleet.sync.replica.tombs)}
        t0 = time.monotonic()
        wait(lambda: not any(d.device.fleet.sync.replica.tombs for d in group), 600,
             "the compaction")
        out["compaction_after_deletes_s"] = round(time.monotonic() - t0, 2)
        wait(lambda: retained_size(broker.port, "edge_classifier/fleet/bench/")[0]
             <= left + 3 * len(group), 120, "the compacted snapshots")  # + m, d, a of each
        msgs, size = retained_size(broker.port, "edge_classifier/fleet/bench/")
        out["retained_after_compaction"] = {"live": left, "messages": msgs, "bytes": size,
                                            "tombstones": 0}
        # the digests of a group in step: a quiet window of 4 intervals

        def totals():
            return [sum(d.device.fleet.stats[k] for d in group)
                    for k in ("fleet_digests_sent", "fleet_digest_bytes", "fleet_rereads")]
        sent0, bytes0, rereads0 = totals()
        t0 = time.monotonic()
        time.sleep(4 * args.digest_interval)  # a benchmark waits; tests never sleep
        sent, nbytes, rereads = (x - y for x, y in zip(totals(), (sent0, bytes0, rereads0)))
        each = nbytes / max(1, sent)
        out["digests"] = {
            "bytes_each": round(each), "window_s": round(time.monotonic() - t0, 1),
            "sent_in_window": sent, "rereads_in_window": rereads,
            "rereads_during_the_whole_run": totals()[2],
            "bytes_per_minute_4_devices_at_60s": round(each * len(group)),
            "bytes_per_minute_4_devices_at_benchmark_interval": round(
                nbytes * 60 / (time.monotonic() - t0))}
        new.stop()
        # 4. a larger fleet of follow-only subscribers
        progress("followers")
        clients, counts = followers(args.followers, broker.port,
                                    lambda n: Wire("bench", KEY.encode(), n,
                                                   a.device.backbone.identity))
        wait(lambda: all(c.is_connected() for c in clients), 60, "the followers")
        b_cpu, me_cpu = cpu_of(broker.process.pid), cpu_of(os.getpid())
        base_counts = list(counts)
        todo = todo[:args.burst]
        done.clear()
        t0 = time.monotonic()
        a.device.post(Teach(origin="bench"))
        wait(lambda: all(c - b0 >= args.burst for c, b0 in zip(counts, base_counts)), 600,
             "the burst at the followers")
        dt = time.monotonic() - t0
        out["followers"] = {
            "subscribers": args.followers, "burst_samples": args.burst,
            "seconds_to_all_followers": round(dt, 2),
            "broker_cpu_ms_per_sample": round(1000 * (cpu_of(broker.process.pid) - b_cpu)
                                              / args.burst, 2),
            "devices_process_cpu_ms_per_sample": round(1000 * (cpu_of(os.getpid()) - me_cpu)
                                                       / args.burst, 2)}
        for c in clients:
            c.disconnect()
            c.loop_stop()
        for d in devs:
            d.stop()
        broker.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
