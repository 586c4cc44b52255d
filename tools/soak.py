#!/usr/bin/env python3
"""Soak run: the device at full speed for a long time while the broker keeps restarting.

Replays the sample photos as fast as the model runs, publishes every prediction to a local
mosquitto that is restarted every ``--restart-every`` seconds, captures a sample every
``--capture-every`` seconds (classes kept at ``--max-per-class`` by the drop policy), and
counts what a subscriber receives. Memory (RSS) is sampled every few seconds; after a warm-up
(the first quarter of the run) it must not grow. Prints one JSON object; exits 1 if memory grew
or the loop stalled.

    python tools/soak.py --seconds 1200                  # the full run: 20 minutes
    python tools/soak.py --seconds 20 --restart-every 6  # the short version CI runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import Broker, decoded_frames, memory_source

from edge_classifier.device.loop import Device
from edge_classifier.backbone.model import Backbone
from edge_classifier.config import ClassConfig, Config, GpioConfig, HeadConfig, MqttConfig
from edge_classifier.comms.events import Capture

CLASSES = ["bird", "cat", "food"]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class Subscriber:
    """Counts messages on the device's topics, reconnecting like any dashboard would."""

    def __init__(self, port: int, base: str):
        import paho.mqtt.client as mqtt
        self.count = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-subscriber")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{base}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):
        self.count += 1

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1200.0)
    parser.add_argument("--restart-every", type=float, default=180.0)
    parser.add_argument("--capture-every", type=float, default=5.0)
    parser.add_argument("--max-per-class", type=int, default=15,
                        help="small, so the store is full (and stays full) before the warm-up "
                             "ends: a filling store is growth by design, not a leak")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    frames = decoded_frames()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    broker = Broker(tmp)
    broker.start()
    config = Config(device_id="soak", keyboard="off",
                    classes=tuple(ClassConfig(c) for c in CLASSES),
                    gpio=GpioConfig(pin_factory="mock"),
                    head=HeadConfig(max_samples_per_class=args.max_per_class),
                    mqtt=MqttConfig(broker=f"mqtt://127.0.0.1:{broker.port}", keepalive=10,
                                    reconnect_min=0.1, reconnect_max=2.0,
                                    prediction_interval=0.0, stats_interval=5.0))
    device = Device(config, backbone=Backbone.from_name(None, num_threads=args.threads),
                    source=memory_source(frames), state_dir=tmp / "state")
    subscriber = Subscriber(broker.port, config.base_topic)
    samples, stop = [], threading.Event()

    def chaos():
        start = time.monotonic()
        next_restart = start + args.restart_every
        next_capture = start + args.capture_every
        next_sample = start
        i = 0
        while not stop.wait(0.05):
            now = time.monotonic()
            if now >= next_sample:
                samples.append((round(now - start, 1), round(rss_mib(), 2)))
                next_sample = now + max(1.0, args.seconds / 100)
            if now >= next_capture:
                device.post(Capture(class_name=CLASSES[i % len(CLASSES)], origin="soak"))
                i += 1
                next_capture = now + args.capture_every
            if now >= next_restart:
                broker.stop()
                time.sleep(1.0)  # the broker is away for a second
                broker.start()
                broker.restarts += 1
                next_restart = now + args.restart_every
            if now - start >= args.seconds:
                device.stop()
                return

    helper = threading.Thread(target=chaos, daemon=True)
    t0 = time.monotonic()
    helper.start()
    try:
        device.run()
    finally:
        stop.set()
        helper.join(10)
        elapsed = time.monotonic() - t0
        time.sleep(1.0)  # let the last messages arrive
        subscriber.close()
        stats = device.publisher.stats
        device.close()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    warm = [m for t, m in samples if t >= elapsed / 4] or [m for _, m in samples]
    half = len(warm) // 2
    early = sum(warm[:half]) / max(1, half) if half else warm[0]
    late = sum(warm[half:]) / max(1, len(warm) - half)
    growth = late - early
    result = {
        "seconds": round(elapsed, 1), "frames": device.counters.frames,
        "fps": round(device.counters.frames / elapsed, 2),
        "captures": device.counters.captures, "capture_errors": device.counters.capture_errors,
        "samples_per_class": device.store.counts(),
        "broker_restarts": broker.restarts, "reconnects": stats.get("reconnects"),
        "published": stats.get("published"), "dropped": stats.get("dropped"),
        "received_by_subscriber": subscriber.count,
        "peak_rss_mib": round(max(m for _, m in samples), 1),
        "final_rss_mib": round(samples[-1][1], 1),
        "rss_growth_after_warmup_mib": round(growth, 2),
        "memory_grows": growth > 5.0,
    }
    print(json.dumps(result, indent=2))
    return 1 if result["memory_grows"] or device.counters.frames == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
