#!/usr/bin/env python3
"""Benchmark: head fit and update times on real embeddings, in one run; prints JSON.

For each head: the time to fit the whole 70 % training part of the data set (TrashNet: ~1,770
samples; target for the default head <= 0.3 s on a 2-core machine), and the time to absorb one
new sample into a head holding 1,000 samples (target <= 20 ms), median of repeats.

    python tools/bench_heads.py [--heads auto,kernel,...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from _common import dataset_arguments, load_views

from edge_classifier.learning.heads import HEAD_NAMES, make_head, stratified_split


def time_head(name, views, y, names, repeats):
    train, _ = stratified_split(y, 0.3, np.random.default_rng(0))
    X, V = views[:, 0], (views[:, 1:] if views.shape[1] > 1 else None)
    pick = (lambda idx: None if V is None else V[idx])
    fits = []
    for _ in range(repeats):
        head = make_head(name)
        t0 = time.perf_counter()
        head.fit(X[train], y[train], names, views=pick(train))
        fits.append((time.perf_counter() - t0) * 1000)
    base = train[:1000]
    head = make_head(name).fit(X[base], y[base], names, views=pick(base))
    adds = []
    for i in train[1000:1000 + 20]:
        t0 = time.perf_counter()
        head.add(X[i], int(y[i]), views=pick(i))
        adds.append((time.perf_counter() - t0) * 1000)
        head.remove(head.n_samples - 1)  # stay at 1,000 samples
    return {"head": name, "fit_samples": int(len(train)), "fit_ms": round(float(np.median(fits)), 1),
            "update_at_samples": 1000, "update_ms": round(float(np.median(adds)), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dataset_arguments(parser)
    parser.add_argument("--heads", default=",".join(HEAD_NAMES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model, views, y, names = load_views(args)
    make_head("auto").fit(views[:50, 0], y[:50], names)  # warm up the maths libraries
    results = [time_head(h, views, y, names, args.repeats) for h in args.heads.split(",")]
    print(json.dumps({"benchmark": "heads", "dataset": args.dataset, "model": model,
                      "views_per_sample": int(views.shape[1]),
                      "targets": {"fit_ms": 300, "update_ms": 20}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
