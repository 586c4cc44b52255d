#!/usr/bin/env python3
"""Benchmark: the package's embedding rate against the bare TFLite interpreter, in one run.

Both run the same model with the same threads on the same pre-decoded frames (the sample
photos, decoded and resized to the 320x240 a Pi camera's lores stream delivers). The bare side
does only set_tensor / invoke / get_tensor on frames already at the model's input size; the
package side does everything a frame costs in production: preprocessing (crop and resize),
invoke and dequantisation. Rounds alternate between the two so machine noise hits both alike.
Prints one JSON object; the target ratio is >= 0.95.

    python tools/bench_backbone.py [--model NAME] [--rounds 6] [--frames 20] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


from edge_classifier.backbone import Backbone
from edge_classifier.fetch import installed_path
from edge_classifier.images import load_image, preprocess
from edge_classifier.manifest import load_manifest
from edge_classifier.runtime import make_interpreter, runtime_version


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def decoded_frames(size=(240, 320)):
    manifest = load_manifest()
    return [preprocess(load_image(installed_path(e)), size, "squash") for e in manifest.images()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--frames", type=int, default=20, help="frames per round and side")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1

    manifest = load_manifest()
    name = args.model or manifest.default_embedding_model
    backbone = Backbone.from_name(name, num_threads=threads)
    frames = decoded_frames()
    ready = [backbone.prepare(f) for f in frames]  # the bare side gets model-sized frames

    bare = make_interpreter(backbone.path.read_bytes(), threads, name)
    inp = bare.get_input_details()[0]
    out = bare.get_output_details()[0]
    batch = [r[None].astype(inp["dtype"]) for r in ready]

    def run_bare(n):
        for i in range(n):
            bare.set_tensor(inp["index"], batch[i % len(batch)])
            bare.invoke()
            bare.get_tensor(out["index"])

    def run_package(n):
        for i in range(n):
            backbone.run(frames[i % len(frames)])

    run_bare(3)  # warm up both
    run_package(3)
    t_bare = t_pkg = 0.0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        run_bare(args.frames)
        t1 = time.perf_counter()
        run_package(args.frames)
        t2 = time.perf_counter()
        t_bare += t1 - t0
        t_pkg += t2 - t1
    n = args.rounds * args.frames
    result = {
        "benchmark": "backbone",
        "model": name,
        "runtime": runtime_version(),
        "threads": threads,
        "frames_per_side": n,
        "bare_invoke_fps": round(n / t_bare, 2),
        "package_embed_fps": round(n / t_pkg, 2),
        "ratio": round(t_bare / t_pkg, 4),
        "target_ratio": 0.95,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
