"""Shared by the tools: the benchmark data set's embedding views, through the package's cache."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

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
    from edge_classifier.augment import Augmentation
    from edge_classifier.backbone import Backbone
    from edge_classifier.cli_learn import dataset_views
    backbone = Backbone.from_name(args.model)
    views, y, names, _ = dataset_views(args.dataset, backbone,
                                       Augmentation(flip=not args.no_flip, crops=args.crops),
                                       progress=True)
    return backbone.name, views, y, names
