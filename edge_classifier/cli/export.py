"""``edge-classifier export-model``: what a state directory learned, as one TFLite file::

    edge-classifier export-model trash.tflite --state ~/state   # trash.tflite + labels.txt

The file holds the backbone and the head: output 0 the class probabilities, output 1 the
unknown score (see :mod:`edge_classifier.learning.export`). Parsing and printing only.
"""

from __future__ import annotations

import functools
from pathlib import Path

from edge_classifier.cli.learn import open_learner, open_state
from edge_classifier.errors import StoreError, UsageError
from edge_classifier.learning.export import EXPORTABLE_HEADS, export_model
from edge_classifier.learning.learner import require_samples

SUFFIX = ".tflite"


def _check_folder(option: str, text: str, path: Path, example: str) -> None:
    if path.is_dir():
        raise UsageError(f"{option}{text}: is a folder; name a file in it, e.g. "
                         f"{path / example}")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"{option}{text}: {folder} {what}; create it first or pick another "
                         "place")


def model_output_path(text: str) -> Path:
    """The file ``export-model TEXT`` writes (``.tflite`` added when missing), checked before
    any work: a :class:`UsageError` if it names a folder or its folder does not exist::

        model_output_path("out/trash")   # Path("out/trash.tflite"), if out/ is a folder
    """
    given = Path(text)
    if given.is_dir():  # also "", "." and "/"
        raise UsageError(f"{text}: is a folder; name a file in it, e.g. {given / 'model.tflite'}")
    out = given if given.suffix == SUFFIX else given.with_name(given.name + SUFFIX)
    _check_folder("", text, out, "model.tflite")
    return out


def labels_output_path(text, model: Path) -> Path:
    """``--labels TEXT``, or ``labels.txt`` beside the model; never the model itself."""
    labels = Path(text) if text else model.with_name("labels.txt")
    if text:
        _check_folder("--labels ", text, labels, "labels.txt")
    if labels.resolve() == model.resolve():
        raise UsageError(f"--labels {text}: is the model file itself; name another file")
    return labels


def cmd_export_model(args, err) -> int:
    out = model_output_path(args.out)
    labels = labels_output_path(args.labels, out)
    state = open_state(args, write=False)
    learner = open_learner(args, state)
    for p in learner.problems:
        err(f"warning: {p}")
    require_samples(learner.store)
    if learner.head is None:
        raise StoreError(f"{state.root}: no head could be fitted from the samples")
    backbone = learner.backbone
    exported = export_model(backbone, learner.head, out, labels, float16=args.float16)
    h, w = backbone.input_size
    classes = len(exported.classes)
    threshold = exported.unknown_threshold
    print(f"{out}: {exported.size / 1e6:.1f} MB, {backbone.name} + {learner.head_name} head "
          f"({exported.head}), {classes} classes; labels in {labels}")
    fitted = "centre-cropped" if backbone.resize == "crop" else "squashed"
    print(f"input: 1x{h}x{w}x3, each frame {fitted} to {h}x{w}")
    if backbone.crop is not None:  # also in the model's metadata ("backbone": {"crop": ...})
        region = ", ".join(f"{v:g}" for v in backbone.crop)
        print(f"region: taught on source.crop = [{region}]: give it only that part of the "
              "camera's frame")
    rule = (f"unknown above {threshold:.4g}" if threshold != float("inf")
            else "never unknown: fewer than two samples")
    print(f"outputs: probabilities (1x{classes}), unknown_score (1x1, {rule})")
    return 0


def add_parsers(sub, positive_int, err, common=None) -> None:
    """Register ``export-model`` on the main parser's subparsers."""
    parents = [common] if common is not None else []
    p = sub.add_parser(
        "export-model", parents=parents,
        help="write the trained classifier (backbone + head) as one TFLite file",
        description="Write the backbone and the state's head as one TFLite model, and "
                    "labels.txt (0 apple, 1 banana, ...) beside it. Output 0 holds the class "
                    "probabilities, output 1 the unknown score. Heads that export: "
                    f"{', '.join(EXPORTABLE_HEADS)}.")
    p.add_argument("out", metavar="OUT.tflite",
                   help="model file to write (.tflite is added if missing; its folder must exist)")
    p.add_argument("--state", metavar="DIR", help="state directory (default: <data home>/state)")
    p.add_argument("--labels", metavar="FILE",
                   help="where to write the labels (default: labels.txt beside the model)")
    p.add_argument("--float16", action="store_true",
                   help="keep the stored samples as float16: about half the head's size, "
                        "probabilities a few thousandths from the package's")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="interpreter threads (default: all cores)")
    p.set_defaults(func=functools.partial(cmd_export_model, err=err))
