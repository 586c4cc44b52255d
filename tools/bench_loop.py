#!/usr/bin/env python3
"""Benchmark: the device loop against the bare interpreter, in one run.

- Frame rate of the whole loop (replayed, pre-decoded 320x240 frames -> preprocessing ->
  backbone -> head over 2,000 stored samples -> smoothing -> publishing every prediction to a
  local mosquitto) over the bare interpreter's invoke rate, same model and threads; rounds
  alternate between the two so machine noise hits both alike. Target ratio >= 0.90.
- Button press to updated head: a simulated press (gpiozero MockFactory) between two frames;
  reports how many frames later the head that includes the new sample is used (target: the
  next frame) and the milliseconds from press to updated head.
- Peak memory of the process with 2,000 stored samples.

Prints one JSON object. Needs mosquitto on the PATH (else publishes to /dev/null, and says so).

    python tools/bench_loop.py [--rounds 4] [--frames 25] [--samples 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_classifier.app import Device
from edge_classifier.backbone import Backbone
from edge_classifier.config import ClassConfig, Config, GpioConfig, HeadConfig, MqttConfig
from edge_classifier.fetch import installed_path
from edge_classifier.images import load_image, preprocess
from edge_classifier.manifest import load_manifest
from edge_classifier.runtime import make_interpreter
from edge_classifier.sources import FrameSource

CLASSES = ["bird", "cat", "hot dog", "flower"]
PIN = 17


class MemorySource(FrameSource):
    """Pre-decoded frames, round robin."""

    def __init__(self, frames):
        super().__init__()
        self.frames = frames

    def _read(self):
        return self.frames[self.frames_read % len(self.frames)]


def start_broker(folder: Path):
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        return None, ""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.01)
    proc.kill()
    return None, ""


def fill_store(device, n: int, rng) -> None:
    """``n`` samples: the sample photos' embeddings with noise, spread over the classes."""
    base = [device.backbone.embed(f) for f in device.source.frames]
    per = n // len(CLASSES)
    views = []
    for i, name in enumerate(CLASSES):
        for _ in range(per):
            e = base[i % len(base)] * (1 + 0.05 * rng.standard_normal(len(base[0])))
            views.append((name, np.stack([e, e[::-1]]).astype(np.float32)))
    for name, v in views:
        device.store.add_sample(name, v)
    device.learner.fit()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    manifest = load_manifest()
    frames = [preprocess(load_image(installed_path(e)), (240, 320), "squash")
              for e in manifest.images()]
    backbone = Backbone.from_name(None, num_threads=threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    broker, url = start_broker(tmp)
    out = {"benchmark": "loop", "model": backbone.name, "threads": threads,
           "publishing": "mosquitto on 127.0.0.1" if broker else "standard output (/dev/null)"}
    saved_stdout = sys.stdout
    try:
        if not broker:
            sys.stdout = open(os.devnull, "w")
        config = Config(device_id="bench", keyboard="off",
                        classes=tuple(ClassConfig(c, button=PIN if i == 0 else None)
                                      for i, c in enumerate(CLASSES)),
                        gpio=GpioConfig(pin_factory="mock", bounce_time=0.0),
                        head=HeadConfig(max_samples_per_class=args.samples),
                        mqtt=MqttConfig(broker=url, prediction_interval=0.0, qos=1))
        device = Device(config, backbone=backbone, source=MemorySource(frames),
                        state_dir=tmp / "state")
        fill_store(device, args.samples, np.random.default_rng(0))
        out["stored_samples"] = len(device.store)
        out["fit_ms_2000_samples"] = round(device.learner.last_fit_ms, 1)
        device.publisher.start()
        if broker:
            device.publisher.wait_for(lambda s: s["connected"], 10)

        bare = make_interpreter(backbone.path.read_bytes(), threads, backbone.name)
        inp, outp = bare.get_input_details()[0], bare.get_output_details()[0]
        ready = [backbone.prepare(f)[None] for f in frames]

        def run_bare(n):
            for i in range(n):
                bare.set_tensor(inp["index"], ready[i % len(ready)])
                bare.invoke()
                bare.get_tensor(outp["index"])

        def run_loop(n):
            for _ in range(n):
                device.apply_events()
                device.step(device.source.read())

        run_bare(3)
        run_loop(3)
        t_bare = t_loop = 0.0
        for _ in range(args.rounds):
            a = time.perf_counter()
            run_bare(args.frames)
            b = time.perf_counter()
            run_loop(args.frames)
            c = time.perf_counter()
            t_bare += b - a
            t_loop += c - b
        n = args.rounds * args.frames
        out.update(bare_invoke_fps=round(n / t_bare, 2), loop_fps=round(n / t_loop, 2),
                   ratio=round(t_bare / t_loop, 4), target_ratio=0.90,
                   published=device.publisher.stats.get("published"))

        # Button press -> updated head.
        before = device.store.counts()["bird"]
        frame_at_press = device.counters.frames
        t_press = time.perf_counter()
        factory = device.panel.pin_factory
        factory.pin(PIN).drive_low()
        factory.pin(PIN).drive_high()
        used_at = None
        for _ in range(10):
            device.apply_events()
            device.step(device.source.read())
            if device.store.counts()["bird"] > before:
                used_at = device.counters.frames
                t_used = time.perf_counter()
                break
        out["press_to_head_frames"] = None if used_at is None else used_at - frame_at_press
        out["press_to_head_ms"] = None if used_at is None else round((t_used - t_press) * 1000, 1)
        out["capture_update_ms"] = round(device.learner.last_fit_ms, 2)
        device.shutdown()
        device.close()
    finally:
        if sys.stdout is not saved_stdout:
            sys.stdout.close()
            sys.stdout = saved_stdout
        if broker:
            broker.terminate()
            broker.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
