#!/usr/bin/env python3
"""Check: the exported TFLite file against the package on every TrashNet test image.

The 70/30 split of ``stratified_split`` with seed 0; the 70 % is taught through
``edge-classifier train`` (a file,labels CSV), the file written by ``edge-classifier
export-model``; then every test image is run by the package (backbone + head) and by the bare
interpreter on the exported file, on the same prepared pixels. Prints one JSON object: label
agreement, largest probability and unknown-score differences, accuracy, file size and
load-to-first-prediction time (median of 5 loads) next to the plain backbone's::

    python tools/check_export.py --work /tmp/export-check   # LiteRT: train, export, compare
    /path/to/tflite-runtime-venv/bin/python tools/check_export.py --work /tmp/export-check \\
        --compare-only   # the same file and state, run by tflite-runtime (no LiteRT installed)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_DATASET

from edge_classifier.backbone.model import Backbone
from edge_classifier.backbone.runtime import interpreter_class, runtime_version
from edge_classifier.datasets.folders import scan_folder
from edge_classifier.frames.images import load_image
from edge_classifier.learning.heads.metrics import stratified_split
from edge_classifier.learning.learner import Learner
from edge_classifier.learning.state import StateDir


def split(dataset: str, seed: int):
    data = scan_folder(dataset)
    train, test = stratified_split(data.labels, 0.3, np.random.default_rng(seed))
    return data, train, test


def first_per_class(indices, labels, n: int):
    """The first ``n`` of ``indices`` of every class, in order."""
    seen: dict = {}
    keep = []
    for i in indices:
        c = int(labels[i])
        if seen.get(c, 0) < n:
            seen[c] = seen.get(c, 0) + 1
            keep.append(i)
    return np.array(keep, np.int64)


def command(*argv: str) -> int:
    """Run ``edge-classifier ARGV`` as a user would; its exit code."""
    return subprocess.run([sys.executable, "-m", "edge_classifier", *argv]).returncode


def teach_and_export(work: Path, data, train, float16: bool) -> float:
    """Train the state on ``train`` and export it; returns the export's seconds."""
    work.mkdir(parents=True, exist_ok=True)
    table = work / "train.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "labels"])
        for i in train:
            writer.writerow([data.paths[i], data.class_names[data.labels[i]]])
    state = work / "state"
    if command("train", str(table), "--state", str(state), "--no-thumbnails", "-q") != 0:
        raise SystemExit("train failed")
    t0 = time.perf_counter()
    extra = ["--float16"] if float16 else []
    if command("export-model", str(work / "model.tflite"), "--state", str(state), *extra) != 0:
        raise SystemExit("export-model failed")
    return time.perf_counter() - t0


def load_to_first_prediction(path: Path, pixels: np.ndarray, threads: int, loads: int) -> float:
    """Median seconds from reading the file to the first output, with the bare interpreter."""
    Interpreter, _ = interpreter_class()
    times = []
    for _ in range(loads):
        t0 = time.perf_counter()
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels[None])
        interpreter.invoke()
        interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(work: Path, data, test, threads: int) -> dict:
    """Every test image through the package and through the exported file."""
    Interpreter, _ = interpreter_class()
    with StateDir(work / "state", write=False) as state:
        learner = Learner(Backbone.from_name(state.model_name(), num_threads=threads), state)
    head, backbone = learner.head, learner.backbone
    names = (work / "labels.txt").read_text("utf-8").splitlines()
    names = [line.split(" ", 1)[1] for line in names]
    assert names == list(head.classes), (names, head.classes)
    threshold = head.unknown_threshold
    exported = Interpreter(model_path=str(work / "model.tflite"), num_threads=threads)
    exported.allocate_tensors()
    inp = exported.get_input_details()[0]
    probs_out, unknown_out = exported.get_output_details()
    rows = {"same_label": 0, "same_best": 0, "right_package": 0, "right_exported": 0}
    dp = du = 0.0
    t_package = t_exported = 0.0
    closest = float("inf")  # smallest |unknown score - threshold| of the package
    first_pixels = None
    for i in test:
        pixels = backbone.prepare(load_image(data.paths[i]))
        first_pixels = pixels if first_pixels is None else first_pixels
        t0 = time.perf_counter()
        p = learner.predict_embedding(backbone.run_prepared(pixels).embedding)
        t1 = time.perf_counter()
        exported.set_tensor(inp["index"], pixels[None])
        exported.invoke()
        P = exported.get_tensor(probs_out["index"])[0].astype(np.float64)
        u = float(exported.get_tensor(unknown_out["index"]).reshape(-1)[0])
        t_exported += time.perf_counter() - t1
        t_package += t1 - t0
        u_pkg = float(head.unknown_score(p.embedding[None])[0])
        best = names[int(np.argmax(P))]
        label = "unknown" if u > threshold else best
        truth = data.class_names[data.labels[i]]
        rows["same_label"] += label == p.label
        rows["same_best"] += best == p.best
        rows["right_package"] += p.label == truth
        rows["right_exported"] += label == truth
        dp = max(dp, float(np.max(np.abs(P - np.array([p.scores[n] for n in names])))))
        du = max(du, abs(u - u_pkg))
        closest = min(closest, abs(u_pkg - threshold))
    n = len(test)
    backbone_file = backbone.path
    model = work / "model.tflite"
    return {
        "runtime": runtime_version(), "images": n, "classes": names,
        "head": learner.head_name, "samples": int(head.n_samples),
        "label_agreement": rows["same_label"] / n, "best_class_agreement": rows["same_best"] / n,
        "accuracy_package": rows["right_package"] / n,
        "accuracy_exported": rows["right_exported"] / n,
        "max_probability_difference": dp, "max_unknown_score_difference": du,
        "unknown_threshold": threshold, "closest_unknown_score_to_threshold": closest,
        "package_ms_per_image": 1000 * t_package / n,
        "exported_ms_per_image": 1000 * t_exported / n,
        "size_bytes": model.stat().st_size, "backbone_size_bytes": backbone_file.stat().st_size,
        "load_to_first_prediction_s": load_to_first_prediction(model, first_pixels, threads, 5),
        "backbone_load_to_first_prediction_s": load_to_first_prediction(backbone_file,
                                                                        first_pixels, threads, 5),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=os.environ.get("EDGE_CLASSIFIER_BENCH_DATA",
                                                            str(DEFAULT_DATASET)),
                        help="folder data set (default: ../shared/datasets/trashnet)")
    parser.add_argument("--work", required=True, help="folder for the state, CSV and model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--float16", action="store_true", help="export-model --float16")
    parser.add_argument("--test-per-class", type=int, default=None, metavar="N",
                        help="compare on the first N test images of each class only")
    parser.add_argument("--compare-only", action="store_true",
                        help="reuse the state and model in --work (e.g. under tflite-runtime)")
    args = parser.parse_args(argv)
    data, train, test = split(args.dataset, args.seed)
    if args.test_per_class:
        test = first_per_class(test, data.labels, args.test_per_class)
    result = {"train_images": int(len(train))}
    if not args.compare_only:
        result["export_s"] = teach_and_export(Path(args.work), data, train, args.float16)
    result.update(compare(Path(args.work), data, test, args.threads))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0 if result["label_agreement"] == 1.0 and result["max_probability_difference"] <= 0.01 \
        else 1


if __name__ == "__main__":
    sys.exit(main())
