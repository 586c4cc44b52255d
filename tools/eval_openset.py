#!/usr/bin/env python3
"""Open-set evaluation: how well each head says "unknown" about a class it never saw.

For every class h and seed s: a stratified 70/30 split (seed s); the head is fitted on the
training part of the other classes; the AUROC of its unknown score for the test images of class
h against the test images of the known classes is recorded, plus how many of each its automatic
threshold rejects. Means over seeds, per held-out class and overall (target for the default
head >= 0.85). Prints JSON.

    python tools/eval_openset.py [--heads auto,knn,...] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from _common import dataset_arguments, load_views

from edge_classifier.learning.heads import HEAD_NAMES, auroc, make_head, stratified_split


def leave_one_class_out(name, views, y, names, seeds):
    C = len(names)
    per_class = np.zeros((seeds, C))
    rejected_unknown, rejected_known = [], []
    X, V = views[:, 0], (views[:, 1:] if views.shape[1] > 1 else None)
    for s in range(seeds):
        train, test = stratified_split(y, 0.3, np.random.default_rng(s))
        for h in range(C):
            keep = train[y[train] != h]
            labels = np.searchsorted([c for c in range(C) if c != h], y[keep])
            head = make_head(name).fit(X[keep], labels, [n for i, n in enumerate(names) if i != h],
                                       views=None if V is None else V[keep])
            score = head.unknown_score(X[test])
            held_out = y[test] == h
            per_class[s, h] = auroc(score[held_out], score[~held_out])
            rejected_unknown.append(float(np.mean(score[held_out] > head.unknown_threshold)))
            rejected_known.append(float(np.mean(score[~held_out] > head.unknown_threshold)))
    means = per_class.mean(axis=0)
    return {"head": name, "auroc": round(float(means.mean()), 4),
            "auroc_per_class": {n: round(float(v), 4) for n, v in zip(names, means)},
            "rejected_unseen": round(float(np.mean(rejected_unknown)), 4),
            "rejected_known": round(float(np.mean(rejected_known)), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dataset_arguments(parser)
    parser.add_argument("--heads", default=",".join(HEAD_NAMES))
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    model, views, y, names = load_views(args)
    results = [leave_one_class_out(h, views, y, names, args.seeds)
               for h in args.heads.split(",")]
    print(json.dumps({"evaluation": "open-set, leave one class out", "dataset": args.dataset,
                      "model": model, "seeds": args.seeds, "target_auroc": 0.85,
                      "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
