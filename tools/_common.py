"""Shared by the tools: the benchmark data set's embedding views, through the package's cache."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edge_classifier.backbone.fetch import installed_path
from edge_classifier.backbone.manifest import load_manifest
from edge_classifier.backbone.model import Backbone
from edge_classifier.backbone.runtime import make_interpreter
from edge_classifier.datasets.importer import dataset_views
from edge_classifier.frames.images import load_image, preprocess
from edge_classifier.frames.sources import FrameSource
from edge_classifier.learning.augment import Augmentation

DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "trashnet"


def dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=os.environ.get("EDGE_CLASSIFIER_BENCH_DATA",
                                                            str(DEFAULT_DATASET)),
                        help="folder data set (default: ../shared/datasets/trashnet)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--crops", type=int, default=0)


def load_views(args):
    """(model name, NxVxD views, N labels, class names) of ``args.dataset``."""
    backbone = Backbone.from_name(args.model)
    views, y, names, _ = dataset_views(args.dataset, backbone,
                                       Augmentation(flip=not args.no_flip, crops=args.crops),
                                       progress=True)
    return backbone.name, views, y, names


def decoded_frames(size=(240, 320)):
    """The sample photos decoded once and sized like a Pi camera's lores stream."""
    return [preprocess(load_image(installed_path(e)), size, "squash")
            for e in load_manifest().images()]


def frame_size(text: str, backbone):
    """(height, width) of ``--frame-size``: "WxH", or "model" for the model's input size."""
    if text == "model":
        return backbone.input_size
    width, _, height = text.lower().partition("x")
    return int(height), int(width)


def memory_source(frames):
    """A frame source cycling through pre-decoded frames (no decoding cost in the loop)."""

    class MemorySource(FrameSource):
        def _read(self):
            return frames[self.frames_read % len(frames)]
    return MemorySource()


def bare_interpreter(backbone, threads):
    """``run(n)``: n set_tensor/invoke/get_tensor rounds of the plain model, nothing else."""
    interpreter = make_interpreter(backbone.path.read_bytes(), threads, backbone.name)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    ready = [backbone.prepare(f)[None] for f in decoded_frames()]

    def run(n):
        for i in range(n):
            interpreter.set_tensor(inp["index"], ready[i % len(ready)])
            interpreter.invoke()
            interpreter.get_tensor(out["index"])
    return run


def alternate(run_a, run_b, rounds: int, frames: int):
    """Seconds per frame of ``run_a`` and ``run_b``, measured in alternating rounds (after a
    warm-up) so that machine noise hits both alike, and the median over the rounds of each
    round's ratio a/b: a burst of noise from another tenant of a shared machine moves the totals
    but hardly the median."""
    import statistics
    import time
    run_a(3)
    run_b(3)
    t_a = t_b = 0.0
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run_a(frames)
        t1 = time.perf_counter()
        run_b(frames)
        t2 = time.perf_counter()
        t_a += t1 - t0
        t_b += t2 - t1
        ratios.append((t1 - t0) / (t2 - t1))
    n = rounds * frames
    return t_a / n, t_b / n, statistics.median(ratios)


def mosquitto_broker(folder: Path):
    """A quiet throwaway mosquitto on a free 127.0.0.1 port (``start()``, ``stop()``, ``url``,
    ``port``; ``available`` is False when mosquitto is not installed): the tests' launcher,
    ``tests/mosquitto.py``, so tests and tools start their brokers one way."""
    import sys
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from mosquitto import Mosquitto
    return Mosquitto(folder, verbose=False)


Broker = mosquitto_broker  # the name bench_loop.py imports
