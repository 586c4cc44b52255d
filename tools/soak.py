#!/usr/bin/env python3
"""Soak run: the device at full speed for many frames while the broker keeps restarting.

Replays the sample photos as fast as the model runs, publishes every prediction to a local
mosquitto (tests/mosquitto.py's launcher) that is restarted every ``--restart-every`` frames,
captures a sample every ``--capture-every`` frames (classes kept at ``--max-per-class`` by the
drop policy), and counts what a subscriber receives. Memory (RSS) is sampled every 1 % of the
frames; after a warm-up (the first quarter of the run) it must not grow. Prints one JSON object;
exits 1 if memory grew, the loop stalled, or a restart was not followed by a reconnect.

    python tools/soak.py --frames 30000                    # the full run: ~20 minutes at 25 fps
    python tools/soak.py --frames 300 --restart-every 100  # the short version CI runs

Everything is scheduled by frame count and every wait is for an event (the publisher noticing
the outage, reconnecting, the subscriber catching up) with a timeout only as an upper bound, so
the result does not depend on how fast the machine is. The loop never waits for a restart,
except that its last frame waits until the restarts are over. The broker keeps its state
(``persistence``) and the subscriber its session across restarts, so it receives what the
broker accepted while it was reconnecting.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import decoded_frames

from edge_classifier.device.loop import Device
from edge_classifier.backbone.model import Backbone
from edge_classifier.config import ClassConfig, Config, GpioConfig, HeadConfig, MqttConfig
from edge_classifier.comms.events import Capture
from edge_classifier.frames.sources import FrameSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mosquitto import HOST, Mosquitto  # noqa: E402  (the tests' broker launcher)
from waiting import wait_until  # noqa: E402

CLASSES = ["bird", "cat", "food"]
WAIT = 60.0  # upper bound for any one event (a reconnect, a restart); a failure after that


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class Subscriber:
    """Counts messages on the device's topics with a persistent session (QoS 1), reconnecting
    like any dashboard would."""

    def __init__(self, port: int, base: str):
        import paho.mqtt.client as mqtt
        self.count = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-subscriber",
                                  clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{base}/#", qos=1)
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_disconnect = lambda *args: self.subscribed.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.connect_async(HOST, port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):
        self.count += 1

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class ChaosSource(FrameSource):
    """Cycles through pre-decoded frames, calling ``on_frame(index)`` before each."""

    def __init__(self, frames, on_frame):
        super().__init__()
        self.frames, self.on_frame = frames, on_frame

    def _read(self):
        self.on_frame(self.frames_read)
        return self.frames[self.frames_read % len(self.frames)]


class Chaos:
    """Restarts the broker when asked (from the loop's thread, by frame count) in a thread of its
    own, each time waiting for the device to notice the outage and to reconnect."""

    def __init__(self, broker: Mosquitto, device: Device, subscriber: Subscriber):
        self.broker, self.device, self.subscriber = broker, device, subscriber
        self.requests: "queue.Queue[bool]" = queue.Queue()
        self.done = 0
        self.failure = None
        self.thread = threading.Thread(target=self._run, name="soak-chaos", daemon=True)
        self.thread.start()

    def _run(self):
        stats = lambda: self.device.publisher.stats  # noqa: E731
        while self.requests.get():
            before = stats().get("reconnects", 0)
            self.broker.stop()
            if not wait_until(lambda: not stats()["connected"], WAIT):
                self.failure = "the device did not notice the broker stopping"
            self.broker.start()
            if not wait_until(lambda: stats()["connected"] and
                              stats().get("reconnects", 0) > before, WAIT):
                self.failure = f"no reconnect within {WAIT} s of restart {self.done + 1}"
            if not wait_until(self.subscriber.subscribed.is_set, WAIT):
                self.failure = "the subscriber did not come back"
            self.broker.restarts += 1
            self.done += 1

    def finish(self, expected: int) -> None:
        """Wait until ``expected`` restarts are done (the loop's last frame calls this)."""
        if not wait_until(lambda: self.done >= expected or self.failure, WAIT * 3):
            self.failure = f"only {self.done} of {expected} restarts finished"

    def close(self):
        self.requests.put(False)
        self.thread.join(WAIT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30000)
    parser.add_argument("--restart-every", type=int, default=4500, metavar="FRAMES")
    parser.add_argument("--capture-every", type=int, default=125, metavar="FRAMES")
    parser.add_argument("--max-per-class", type=int, default=15,
                        help="small, so the store is full (and stays full) before the warm-up "
                             "ends: a filling store is growth by design, not a leak")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    restarts = max(0, (args.frames - 1) // args.restart_every)

    frames = decoded_frames()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    broker = Mosquitto(tmp, persistence=True, verbose=False).start()
    config = Config(device_id="soak", keyboard="off",
                    classes=tuple(ClassConfig(c) for c in CLASSES),
                    gpio=GpioConfig(pin_factory="mock"),
                    head=HeadConfig(max_samples_per_class=args.max_per_class),
                    mqtt=MqttConfig(broker=broker.url, keepalive=10, reconnect_min=0.1,
                                    reconnect_max=2.0, prediction_interval=0.0,
                                    stats_interval=5.0))
    subscriber = Subscriber(broker.port, config.base_topic)
    samples = []
    every_sample = max(1, args.frames // 100)
    holder = {}

    def on_frame(i):
        device, chaos = holder["device"], holder["chaos"]
        if i % every_sample == 0:
            samples.append((i, round(rss_mib(), 2)))
        if i % args.capture_every == 0:
            device.post(Capture(class_name=CLASSES[(i // args.capture_every) % len(CLASSES)],
                                origin="soak"))
        if i and i % args.restart_every == 0 and i // args.restart_every <= restarts:
            chaos.requests.put(True)
        if i == args.frames - 1:
            chaos.finish(restarts)

    device = Device(config, backbone=Backbone.from_name(None, num_threads=args.threads),
                    source=ChaosSource(frames, on_frame), state_dir=tmp / "state")
    holder["device"] = device
    if not wait_until(subscriber.subscribed.is_set, WAIT):
        raise SystemExit("soak: the subscriber could not subscribe")
    holder["chaos"] = chaos = Chaos(broker, device, subscriber)
    t0 = time.monotonic()
    try:
        device.run(frames=args.frames)
        elapsed = time.monotonic() - t0
        stats = device.publisher.stats
        published = stats.get("published", 0)
        # wait for the subscriber to receive what was published (upper bound only)
        wait_until(lambda: subscriber.count >= published, WAIT)
    finally:
        chaos.close()
        subscriber.close()
        device.close()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    warm = [m for i, m in samples if i >= args.frames / 4] or [m for _, m in samples]
    half = len(warm) // 2
    early = sum(warm[:half]) / max(1, half) if half else warm[0]
    late = sum(warm[half:]) / max(1, len(warm) - half)
    growth = late - early
    result = {
        "frames": device.counters.frames, "seconds": round(elapsed, 1),
        "fps": round(device.counters.frames / elapsed, 2),
        "captures": device.counters.captures, "capture_errors": device.counters.capture_errors,
        "samples_per_class": device.store.counts(),
        "broker_restarts": broker.restarts, "reconnects": stats.get("reconnects"),
        "published": published, "dropped": stats.get("dropped"),
        "received_by_subscriber": subscriber.count,
        "peak_rss_mib": round(max(m for _, m in samples), 1),
        "final_rss_mib": round(samples[-1][1], 1),
        "rss_growth_after_warmup_mib": round(growth, 2),
        "memory_grows": growth > 5.0,
        "failure": chaos.failure,
    }
    print(json.dumps(result, indent=2))
    ok = not result["memory_grows"] and result["frames"] == args.frames and not chaos.failure
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
