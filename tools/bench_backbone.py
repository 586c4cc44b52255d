#!/usr/bin/env python3
"""Benchmark: the package's embedding rate against the bare TFLite interpreter, in one run.

Both run the same model with the same threads on the same pre-decoded frames (the sample
photos, decoded and resized to the 320x240 a Pi camera's lores stream delivers). The bare side
does only set_tensor / invoke / get_tensor on frames already at the model's input size; the
package side does everything a frame costs in production: preprocessing (crop and resize),
invoke and dequantisation. Rounds alternate between the two so machine noise hits both alike.
Prints one JSON object: the ratio (target >= 0.95) of the totals and the median of the rounds'
ratios (less moved by bursts of noise on a shared machine), the bare invoke and the package's
overhead per frame in ms. ``--frame-size model`` feeds frames at the model's input size, as the camera's
ISP delivers them (see PicameraSource): no resize is left.

    python tools/bench_backbone.py [--model NAME] [--rounds 6] [--frames 20] [--threads N]
                                   [--frame-size 320x240|model]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys


from _common import alternate, bare_interpreter, decoded_frames, frame_size

from edge_classifier.backbone.model import Backbone
from edge_classifier.backbone.manifest import load_manifest
from edge_classifier.backbone.runtime import runtime_version


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--frames", type=int, default=20, help="frames per round and side")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--frame-size", default="320x240",
                        help="WxH of the frames fed in (default 320x240, a lores stream the CPU "
                             "resizes), or 'model': the model's input size, as the camera's "
                             "ISP delivers it (no resize)")
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1

    manifest = load_manifest()
    name = args.model or manifest.default_embedding_model
    backbone = Backbone.from_name(name, num_threads=threads)
    frames = decoded_frames(frame_size(args.frame_size, backbone))
    run_bare = bare_interpreter(backbone, threads)

    def run_package(n):
        for i in range(n):
            # preprocessing, invoke, dequantisation, as the device's loop runs a frame
            backbone.run_frame(frames[i % len(frames)])

    t_bare, t_pkg, median = alternate(run_bare, run_package, args.rounds, args.frames)
    n = args.rounds * args.frames
    result = {
        "benchmark": "backbone",
        "model": name,
        "runtime": runtime_version(),
        "threads": threads,
        "frames_per_side": n,
        "bare_invoke_fps": round(1 / t_bare, 2),
        "package_embed_fps": round(1 / t_pkg, 2),
        "ratio": round(t_bare / t_pkg, 4),
        "ratio_median_round": round(median, 4),
        "target_ratio": 0.95,
        "bare_invoke_ms": round(t_bare * 1000, 3),
        "overhead_ms_per_frame": round((t_pkg - t_bare) * 1000, 3),
        "frame_size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
