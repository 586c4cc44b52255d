#!/usr/bin/env python3
"""Benchmark: what the stored samples and the head add to the device's peak memory.

A state of N samples (TrashNet embeddings, two views each as a capture stores them; beyond its
2,527 photos, copies with 5 % multiplicative noise, so every sample is distinct) is built once
in a temporary folder. Then, each in a fresh process, the device's learning side is started on
it the way ``run`` starts it (glibc's mmap threshold fixed, see ``edge_classifier.core.memory``;
backbone, ``StateDir``, ``Learner``) and predicts 50 frames:

- ``empty``: the same process on a state with no samples (the baseline);
- ``fit``: no saved head: every sample is read and the head is fitted (a first start, or a
  head rebuilt after its file was lost);
- ``load``: the saved head is loaded (every later start);
- ``refit``: loaded, then a background refit (what deleting or renaming a class starts) while
  predictions go on, swapped in.

Prints the peak RSS (``VmHWM``) of each and its excess over ``empty`` (targets: 15 MB at 2,000
samples, 50 MB at 10,000)::

    python tools/bench_memory.py [--sizes 2000,10000] [--keep-malloc] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import dataset_arguments, decoded_frames, load_views

MODES = ("empty", "fit", "load", "refit")


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise KeyError("VmHWM")


def build_state(folder: Path, views: np.ndarray, y: np.ndarray, names, n: int, backbone) -> None:
    """A state of ``n`` samples (no thumbnails: they live on disk only)."""
    from edge_classifier.learning.state import StateDir
    rng = np.random.default_rng(0)
    step = np.float32(views[views > 0].min())  # the backbone's output scale: its levels k * step
    with StateDir(folder, command="bench_memory") as state:
        store = state.open_store(backbone.identity, thumbnail_size=0)
        for i in range(n):
            v = views[i % len(y)]
            if i >= len(y):  # a distinct sample on the backbone's own 256 levels
                k = np.clip(np.rint(v * (1.0 + 0.05 * rng.standard_normal(v.shape)) / step), 0, 255)
                v = k.astype(np.float32) * step
            store.add_sample(names[int(y[i % len(y)])], v)


def one(mode: str, folder: Path, model, release: bool = True) -> dict:
    from edge_classifier.backbone.model import Backbone
    from edge_classifier.core import memory
    from edge_classifier.learning.learner import Learner
    from edge_classifier.learning.state import StateDir
    if release:
        memory.release_large_frees()  # as the CLI's main does
    backbone = Backbone.from_name(model)
    frames = decoded_frames()
    t0 = time.perf_counter()
    with StateDir(folder, command="bench_memory") as state:
        if mode == "fit":
            state.remove_head()
        learner = Learner(backbone, state)
        start_s = time.perf_counter() - t0
        if mode == "refit":
            learner._refit_later()
        for i in range(50):
            learner.predict(frames[i % len(frames)])
        if mode == "refit":
            learner.wait_background()
            learner.poll()
        if mode in ("fit", "empty"):
            learner.save()
    return {"mode": mode, "samples": len(learner.store), "start_s": round(start_s, 3),
            "peak_rss_mib": round(_hwm_mib(), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dataset_arguments(parser)
    parser.add_argument("--sizes", default="2000,10000")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep-malloc", action="store_true",
                        help="leave glibc's mmap threshold as it is (what the CLI fixes at start, "
                             "edge_classifier.core.memory): to see what that saves")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "STATE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], Path(args.one[1]), args.model, not args.keep_malloc)))
        return 0
    from edge_classifier.backbone.model import Backbone
    model, views, y, names = load_views(args)
    backbone = Backbone.from_name(model)
    extra = ["--model", model] + (["--keep-malloc"] if args.keep_malloc else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        def child(mode, folder):
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(folder)] + extra,
                                 capture_output=True, text=True, check=True)
            return json.loads(out.stdout.strip().splitlines()[-1])
        empty = Path(tmp) / "empty"
        build_state(empty, views, y, names, 0, backbone)
        base = child("empty", empty)
        rows.append(dict(base, over_empty_mib=0.0))
        for n in [int(s) for s in args.sizes.split(",")]:
            folder = Path(tmp) / f"n{n}"
            build_state(folder, views, y, names, n, backbone)
            for mode in ("fit", "load", "refit"):
                r = child(mode, folder)
                r["over_empty_mib"] = round(r["peak_rss_mib"] - base["peak_rss_mib"], 1)
                rows.append(r)
    if args.json:
        print(json.dumps({"benchmark": "memory", "model": model, "rows": rows,
                          "targets_mib": {"2000": 15, "10000": 50}}, indent=2))
        return 0
    cols = ("samples", "mode", "start_s", "peak_rss_mib", "over_empty_mib")
    print("  ".join(c.rjust(14) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).rjust(14) for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
