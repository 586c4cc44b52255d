#!/usr/bin/env python3
"""Benchmark: how the default head and the exact kernel head scale with the number of samples.

For N = 250 ... 10,000 samples (TrashNet embeddings; beyond its 2,527 photos, copies with 5 %
multiplicative noise put back on the backbone's 256 output levels, so every sample is distinct
and is what a capture gives) and each head, in a fresh process: the
time to fit all N, to add one sample and to remove one (median of 20; for ``auto`` the
recalibration that follows an edit runs in the Learner's background thread and is reported
as ``recal``), to load the saved head from its .npz bytes (median of 5; ``load_file_ms``: the
state's whole path from ``head.npz`` on disk, read, CRC-32 and checks), to predict one frame
(median of 200, in a tight loop, and ``after_invoke_ms``: median of 100 predictions each right
after a real backbone invoke, as in the device loop, where the invoke evicts the head's arrays
from the caches), the head's own array memory, and the process's peak RSS over the same process just before
the head was built (the peak is reset there, Linux ``clear_refs``, so what generating the
embeddings took does not hide the head's own peak). A head that fits from the store's rows
(``auto``) is fitted, edited and loaded as the Learner does it: from the samples in the store's
compact form, built before that peak is reset (they are the store's memory, not the head's),
its load including the hand-back of the store's samples and their check (their checksums
against those saved, as the Learner does, and a few of their points)::

    python tools/bench_heads.py [--sizes 250,500,1000,2000,5000,10000] [--heads auto,kernel]
                                [--kernel-max 5000] [--json]

The exact kernel head is skipped above ``--kernel-max`` samples (its N x N factor alone is
400 MB at 10,000).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import dataset_arguments, decoded_frames, load_views

from edge_classifier.backbone.model import Backbone
from edge_classifier.core import blas, memory
from edge_classifier.learning.compact import Compactor, ViewRows
from edge_classifier.learning.heads import load_head, make_head
from edge_classifier.learning.learner import sample_checksums
from edge_classifier.learning.npzfile import read_npz
from edge_classifier.learning.state import StateDir

SIZES = (250, 500, 1000, 2000, 5000, 10000)


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def _peak_base() -> float:
    """Reset the process's peak RSS to its current RSS (Linux ``clear_refs``) and return it:
    the peak measured after this is the head's own, not that of generating the samples
    (which, at 10,000, is higher than anything the head does). Without ``/proc``, the peak
    so far (then only a peak above it shows)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_mib() -> float:
    try:
        return _status_mib("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def head_bytes(head) -> int:
    """Bytes of the NumPy arrays a head holds (one level of containers deep)."""
    if hasattr(head, "nbytes"):
        return int(head.nbytes())
    total = 0
    for value in vars(head).values():
        items = value if isinstance(value, (list, tuple)) else \
            (vars(value).values() if hasattr(value, "__dict__") else [value])
        total += sum(v.nbytes for v in items if isinstance(v, np.ndarray))
    return total


def samples(views, y, n, rng):
    """n distinct samples (N x V x D) with labels, TrashNet first, then noisy copies."""
    idx = np.arange(n) % len(y)
    out = views[idx].copy()
    extra = np.arange(n) >= len(y)
    for start in np.flatnonzero(extra)[::1000]:  # in chunks: no big temporary to inflate the peak
        rows = slice(start, min(n, start + 1000))
        out[rows] *= 1.0 + 0.05 * rng.standard_normal(out[rows].shape, dtype=np.float32)
    np.maximum(out, 0, out=out)
    step = np.float32(views[views > 0].min())  # the backbone's output scale: levels k * step
    for start in np.flatnonzero(extra)[::1000]:
        rows = slice(start, min(n, start + 1000))
        out[rows] = np.clip(np.rint(out[rows] / step), 0, 255).astype(np.float32) * step
    return out, y[idx]


def _median_ms(times):
    return round(statistics.median(times) * 1000, 3)


def after_invoke(head, frame, backbone, count=100):
    """Median seconds of ``head.predict_detailed(frame)`` right after a backbone invoke."""
    pixels = [backbone.prepare(f) for f in decoded_frames()]
    times = []
    for i in range(count):
        backbone.run_prepared(pixels[i % len(pixels)])
        t0 = time.perf_counter()
        head.predict_detailed(frame)
        times.append(time.perf_counter() - t0)
    return times


def measure(name, views, y, names, n, model=None):
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    V, labels = samples(views[order], y[order], n + 20, rng)
    head = make_head(name)
    pack = Compactor()  # the store's in-memory samples, for a head that reads them
    items = [pack(v) for v in V] if hasattr(head, "fit_rows") else None
    gc.collect()
    base = _peak_base()
    X, extra = V[:n, 0], (V[:n, 1:] if V.shape[1] > 1 else None)
    t0 = time.perf_counter()
    with blas.threads(None):
        if items is None:
            head.fit(X, labels[:n], names, views=extra)
        else:
            head.fit_rows(ViewRows(items[:n]), labels[:n], names)
    fit_s = time.perf_counter() - t0
    blas.set_threads(1)  # as on the device
    adds, removes, recal = [], [], []
    for i in range(n, n + 20):
        t0 = time.perf_counter()
        kw = {} if items is None else {"item": items[i]}
        head.add(V[i, 0], int(labels[i]), views=V[i, 1:] if V.shape[1] > 1 else None, **kw)
        adds.append(time.perf_counter() - t0)
    for _ in range(20):
        j = int(rng.integers(0, head.n_samples))
        t0 = time.perf_counter()
        head.remove(j)
        removes.append(time.perf_counter() - t0)
    if hasattr(head, "calibration_job"):
        t0 = time.perf_counter()
        head.refresh()
        recal.append(time.perf_counter() - t0)
    frame = V[0, 0][None]
    head.predict_detailed(frame)
    preds = []
    for _ in range(200):
        t0 = time.perf_counter()
        head.predict_detailed(frame)
        preds.append(time.perf_counter() - t0)
    rss_over = round(_peak_mib() - base, 1)  # the head's life on a device: fit, edits, recal
    tmp = tempfile.TemporaryDirectory()
    state = StateDir(Path(tmp.name) / "state")
    gc.collect()
    save_base = _peak_base()
    t0 = time.perf_counter()  # the device's periodic save: what it adds to the peak, and takes
    # as the Learner saves: a head that can hands over its own arrays (written at once)
    arrays, meta = head.to_state(copy=False) if hasattr(head, "points_from_store") \
        else head.to_state()
    state.save_head(arrays, {"edge_classifier": {"head": name}, "head_meta": meta})
    save_ms = (time.perf_counter() - t0) * 1000
    save_peak = round(_peak_mib() - save_base, 1)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    loads, file_loads = [], []
    kept = head._pts.items() if getattr(head, "points_from_store", False) else None
    crc = sample_checksums(kept) if kept is not None else None  # what the Learner saves

    def hand_back(loaded):  # as the Learner does: the store's samples, in order, checked
        if kept is not None:
            got = list(kept)
            loaded.attach_points(got)
            assert np.array_equal(sample_checksums(got), crc) and loaded.points_match()
    for _ in range(5):
        t0 = time.perf_counter()
        hand_back(load_head(read_npz(buf)[0], json.loads(json.dumps(meta))))
        loads.append(time.perf_counter() - t0)
    with tmp, state:  # the state's whole path: file, CRC, checks
        # (after rss_over: the copies it loads are not the head's memory)
        for _ in range(5):
            t0 = time.perf_counter()
            saved_arrays, saved_meta = state.load_head_files()
            hand_back(load_head(saved_arrays, saved_meta["head_meta"]))
            file_loads.append(time.perf_counter() - t0)
    cold = after_invoke(head, frame, Backbone.from_name(model))
    return {"head": name, "n": n, "fit_s": round(fit_s, 3), "add_ms": _median_ms(adds),
            "remove_ms": _median_ms(removes), "recal_s": round(recal[0], 3) if recal else None,
            "load_ms": _median_ms(loads), "load_file_ms": _median_ms(file_loads),
            "predict_ms": _median_ms(preds),
            "after_invoke_ms": _median_ms(cold),
            "head_mb": round(head_bytes(head) / 1e6, 1), "saved_mb": round(len(buf.getvalue()) / 1e6, 1),
            "rss_over_mib": rss_over, "save_ms": round(save_ms, 1), "save_peak_mib": save_peak,
            "views_f32_mb": round(n * V.shape[1] * V.shape[2] * 4 / 1e6, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dataset_arguments(parser)
    parser.add_argument("--heads", default="auto,kernel")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--kernel-max", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("HEAD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        memory.release_large_frees()  # as the device's CLI does
        model, views, y, names = load_views(args)
        make_head(args.one[0]).fit(views[:50, 0], y[:50], names)  # warm up the maths libraries
        print(json.dumps(measure(args.one[0], views, y, names, int(args.one[1]), model)))
        return 0
    rows, notes = [], []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])
                   if a not in ("--json",)]
    passthrough = [a for i, a in enumerate(passthrough)
                   if not (a in ("--heads", "--sizes", "--kernel-max") or
                           (i and passthrough[i - 1] in ("--heads", "--sizes", "--kernel-max")))]
    for n in [int(s) for s in args.sizes.split(",")]:
        for name in args.heads.split(","):
            if name == "kernel" and n > args.kernel_max:
                notes.append(f"kernel skipped at N={n} (N x N factor: {n * n * 4 / 1e6:.0f} MB)")
                continue
            out = subprocess.run([sys.executable, __file__, "--one", name, str(n)] + passthrough,
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps({"benchmark": "heads", "rows": rows, "notes": notes}, indent=2))
        return 0
    cols = ["n", "head", "fit_s", "add_ms", "remove_ms", "recal_s", "load_ms", "load_file_ms", "predict_ms",
            "after_invoke_ms", "head_mb", "saved_mb", "rss_over_mib", "save_ms", "save_peak_mib", "views_f32_mb"]
    print("  ".join(c.rjust(12) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).rjust(12) for c in cols))
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
