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
- ``head_save``: the periodic save of the head written in the loop thread (as before) against
  the longest frame while it is written in the background (as ``Device.run`` does), beside the
  median frame.
- ``--web``: the same with the web studio served and one headless Chromium watching its live
  view (MJPEG and the bars); target ratio >= 0.85. Adds the median time from reading a frame
  to its bars being drawn in that browser (target <= 200 ms) and what the studio adds to the
  device's memory, measured in separate processes (target <= 25 MB). Needs Debian's chromium
  and chromium-driver and selenium. ``--watcher stream`` watches with a client that only reads
  the streams instead: the device's side alone, as when the browser is on a phone.

Prints one JSON object: the ratio of the totals and the median of the rounds' ratios (less
moved by bursts of noise on a shared machine), the bare invoke and the loop's overhead per frame in ms,
and ``stage_ms``: each stage of a step timed on its own (invoke — with the frame resize, its
first op, see Backbone.run_frame —, head, smoothing, publish, the rest). ``--frame-size model`` replays frames at the model's input size, as the
camera's ISP delivers them (no resize left). Needs mosquitto on the PATH (else publishes to
/dev/null, and says so).

    python tools/bench_loop.py [--rounds 4] [--frames 25] [--samples 2000] [--web [--watcher stream]]
                               [--frame-size 320x240|model] [--prediction-interval S]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (Broker, alternate, bare_interpreter, decoded_frames, frame_size,
                     memory_source)

from edge_classifier.core import memory
from edge_classifier.device.loop import Device
from edge_classifier.backbone.model import Backbone
from edge_classifier.config import (ClassConfig, Config, GpioConfig, HeadConfig, MqttConfig,
                                    WebConfig)

CLASSES = ["bird", "cat", "hot dog", "flower"]
PIN = 17


def fill_store(device, n: int, rng) -> None:
    """``n`` samples: the sample photos' embeddings with noise, spread over the classes."""
    base = [device.backbone.embed(f) for f in decoded_frames()]
    per = n // len(CLASSES)
    views = []
    for i, name in enumerate(CLASSES):
        for _ in range(per):
            e = base[i % len(base)] * (1 + 0.05 * rng.standard_normal(len(base[0])))
            views.append((name, np.stack([e, e[::-1]]).astype(np.float32)))
    for name, v in views:
        device.store.add_sample(name, v)
    device.learner.fit()


def stage_ms(device, frames, n: int) -> dict:
    """Mean ms per frame of each stage of ``Device.step``, timed one by one on the loop's own
    parts (the invoke included, for scale); "step" is a whole step, the rest what is left."""
    import time
    backbone, learner, smoother, bus = (device.backbone, device.learner, device.smoother,
                                        device.bus)
    total = dict.fromkeys(("invoke", "head", "smoothing", "publish", "step"), 0.0)
    for i in range(n):
        frame = frames[i % len(frames)]
        t1 = time.perf_counter()
        embedding = backbone.run_frame(frame).embedding  # the resize is its first op
        t2 = time.perf_counter()
        p = learner.predict_embedding(embedding)
        t3 = time.perf_counter()
        state = smoother.update(p.label, p.confidence, p.scores)
        t4 = time.perf_counter()
        bus.publish_prediction(dict(p.as_dict(), state=state, timestamp=round(time.time(), 3),
                                    frame=i, model=backbone.name, head=learner.head_name))
        t5 = time.perf_counter()
        device.step(frame)
        t6 = time.perf_counter()
        for name, dt in zip(total, (t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            total[name] += dt
    ms = {k: round(v / n * 1000, 3) for k, v in total.items()}
    ms["rest"] = round(ms["step"] - sum(v for k, v in ms.items() if k != "step"), 3)
    return ms


def save_stall(device, overlap: bool, rounds: int = 5, frames: int = 20) -> dict:
    """The periodic head save against the frames beside it: the save written in the loop
    thread (as before) and the longest frame while it is written in the background (as
    ``Device.run`` does now), beside the median frame; median of ``rounds``."""
    learner = device.learner

    def frame_ms(save):
        out = []
        for i in range(frames):
            t0 = time.perf_counter()
            if i == 2:
                save()
            device.step(device.source.read(), overlap=overlap)
            device.settle()
            out.append((time.perf_counter() - t0) * 1000)
        learner.wait_saved()
        return out
    sync, longest, median = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        device.settle()
        learner.save()
        sync.append((time.perf_counter() - t0) * 1000)
        median.append(statistics.median(frame_ms(lambda: None)))
        longest.append(max(frame_ms(learner.save_in_background)))
    return {"save_in_loop_ms": round(statistics.median(sync), 1),
            "frame_ms": round(statistics.median(median), 1),
            "longest_frame_beside_background_save_ms": round(statistics.median(longest), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--frame-size", default="320x240",
                        help="WxH of the replayed frames (default 320x240: the CPU crops and "
                             "resizes), or 'model': the model's input size, as the camera's ISP "
                             "delivers it with source.width = height = 0")
    parser.add_argument("--web", action="store_true",
                        help="serve the web studio, watched by headless Chromium")
    parser.add_argument("--watcher", choices=("chromium", "stream"), default="chromium",
                        help="--web: who watches: headless Chromium on this machine, or a "
                             "client that only reads the streams (a browser elsewhere)")
    parser.add_argument("--prediction-interval", type=float, default=0.0, metavar="S",
                        help="mqtt.prediction_interval of the device (default 0: every "
                             "prediction published, the worst case; the shipped default is 1 s)")
    parser.add_argument("--no-overlap", action="store_true",
                        help="finish each frame (head, smoothing, publishing) before the next "
                             "invoke, instead of beside it as Device.run does")
    args = parser.parse_args(argv)
    memory.release_large_frees()  # as the CLI's main does before `run`
    threads = args.threads or os.cpu_count() or 1
    backbone = Backbone.from_name(None, num_threads=threads)
    frames = decoded_frames(frame_size(args.frame_size, backbone))
    tmp = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    broker = Broker(tmp)
    broker = broker.start() if broker.available else None
    url = broker.url if broker else ""
    out = {"benchmark": "loop", "model": backbone.name, "threads": threads,
           "overlap": not args.no_overlap, "prediction_interval_s": args.prediction_interval,
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
                        mqtt=MqttConfig(broker=url, prediction_interval=args.prediction_interval,
                                        qos=1),
                        web=WebConfig(listen="127.0.0.1:0", inbox_size=0) if args.web
                        else WebConfig())
        device = Device(config, backbone=backbone, source=memory_source(frames),
                        state_dir=tmp / "state")
        fill_store(device, args.samples, np.random.default_rng(0))
        out["stored_samples"] = len(device.store)
        out["fit_ms_2000_samples"] = round(device.learner.last_fit_ms, 1)
        device.publisher.start()
        if broker:
            device.publisher.wait_for(lambda s: s["connected"], 10)

        watcher, read_at = None, {}
        if args.web:
            import _web
            device.web.start()
            watcher = (_web.Watcher if args.watcher == "chromium" else _web.StreamWatcher)(
                device.web.url)
            out["watcher"] = args.watcher
        run_bare = bare_interpreter(backbone, threads)

        def run_loop(n):  # what Device.run does, frame by frame
            for _ in range(n):
                device.apply_events()
                at = time.time()
                device.step(device.source.read(), overlap=not args.no_overlap)
                read_at[device.counters.frames] = at
            device.settle()  # the round's last frame is finished within the round

        if watcher is not None:
            for _ in range(3000):  # frames until the page shows them
                run_loop(1)
                if watcher.ready():
                    break
            watcher.clear()
        watcher_cpu = watcher.cpu_seconds() if watcher is not None else 0.0
        t_bare, t_loop, median = alternate(run_bare, run_loop, args.rounds, args.frames)
        out.update(bare_invoke_fps=round(1 / t_bare, 2), loop_fps=round(1 / t_loop, 2),
                   ratio=round(t_bare / t_loop, 4), ratio_median_round=round(median, 4),
                   target_ratio=0.85 if args.web else 0.90,
                   bare_invoke_ms=round(t_bare * 1000, 3),
                   overhead_ms_per_frame=round((t_loop - t_bare) * 1000, 3),
                   frame_size=f"{frames[0].shape[1]}x{frames[0].shape[0]}",
                   published=device.publisher.stats.get("published"))
        if watcher is not None:
            # Before stage_ms: its predictions carry frame numbers of their own (0, 1, ...),
            # which would pair with the warm-up's frames of the same numbers, seconds earlier.
            out["frame_to_bar"] = _web.latency_ms(watcher.rendered(), read_at)
            out["watcher_cpu_per_loop_second"] = round(  # the cores it took from the loop
                (watcher.cpu_seconds() - watcher_cpu) / (t_loop * args.rounds * args.frames), 3)
            out["web_stats"] = device.web.stats
            watcher.close()
        out["stage_ms"] = stage_ms(device, frames, args.rounds * args.frames)

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
        out["head_save"] = save_stall(device, overlap=not args.no_overlap)
        device.shutdown()
        device.close()
    finally:
        if sys.stdout is not saved_stdout:
            sys.stdout.close()
            sys.stdout = saved_stdout
        if broker:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if args.web:
        import _web
        out["web_memory"] = _web.rss_cost()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
