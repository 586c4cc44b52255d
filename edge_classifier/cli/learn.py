"""``edge-classifier train``, ``predict``, ``export`` and ``eval``: learning from the command
line. Parsing and printing only: the state directory, the importer and the evaluation do the work."""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path
from typing import List

import numpy as np

from edge_classifier.backbone.model import Backbone
from edge_classifier.core.paths import default_state_dir
from edge_classifier.datasets.evaluate import few_shot_eval, format_report, format_table, parse_shots
from edge_classifier.datasets.importer import dataset_views, import_files, is_multilabel, load_dataset
from edge_classifier.errors import EdgeClassifierError, ImageError, StoreError, UsageError
from edge_classifier.frames.images import load_image
from edge_classifier.learning.augment import Augmentation
from edge_classifier.learning.heads import HEAD_NAMES
from edge_classifier.learning.learner import Learner, require_samples
from edge_classifier.learning.state import StateDir

DEFAULT_MAX_SAMPLES = 500  # as head.max_samples_per_class


def state_root(args) -> Path:
    return Path(args.state).expanduser() if args.state else default_state_dir()


def open_state(args, write: bool) -> StateDir:
    """The state directory of ``--state``; read-only users need it to exist already."""
    root = state_root(args)
    state = StateDir(root, write=write, command=f"edge-classifier {args.command}")
    if not write and not state.exists():
        raise StoreError(f"{root} is not a state directory (nothing was taught there); teach "
                         f"it with 'edge-classifier train DATASET --state {root}', or name "
                         "another with --state")
    return state


def open_learner(args, state: StateDir, load: bool = True) -> Learner:
    """A learner on ``state`` with the model and head the state was taught with, unless the
    command line names others."""
    name = getattr(args, "model", None) or state.model_name()
    backbone = Backbone.from_name(name, num_threads=args.threads,
                                  resize=getattr(args, "resize", None) or "crop",
                                  crop=state.crop())  # pictures are of the region: used whole
    augmentation = Augmentation(flip=not getattr(args, "no_flip", False),
                                crops=getattr(args, "crops", 0) or 0)
    return Learner(backbone, state, getattr(args, "head", None), augmentation, load=load)


def cmd_train(args, err) -> int:
    paths, label_sets, class_names = load_dataset(args.dataset)
    with open_state(args, write=True) as state:
        if args.head is None and is_multilabel(label_sets):
            args.head = "multilabel"
        learner = open_learner(args, state, load=False)
        for p in learner.problems:
            err(f"warning: {p}")
        limit = getattr(args, "max_samples_per_class", None) or DEFAULT_MAX_SAMPLES
        report = import_files(learner, paths, label_sets, max_samples_per_class=limit,
                              thumbnails=not args.no_thumbnails, progress=not args.quiet,
                              on_error=err)
        for name, count in report.over_limit.items():
            err(f"warning: class {name!r} is full ({limit} samples): {count} files not imported; "
                "raise the limit with --max-samples-per-class N (and head.max_samples_per_class "
                "in the device's config)")
        if report.classes_refused:
            shown = ", ".join(repr(n) for n in report.classes_refused[:5])
            more = len(report.classes_refused) - 5
            err(f"warning: {len(report.classes_refused)} classes not created ({shown}"
                f"{f' and {more} more' if more > 0 else ''}): the state holds its most classes "
                f"({learner.store.max_classes})")
        learner.fit()
        learner.save()
        store = learner.store
        counts = ", ".join(f"{k} {v}" for k, v in store.counts().items())
        print(f"{report.added} samples added ({report.skipped} already imported) to {store.root}")
        print(f"classes: {counts}")
        if learner.head is not None:
            print(f"head: {learner.head_name} fitted on {len(store)} samples in "
                  f"{learner.last_fit_ms:.0f} ms")
    return 1 if report.failed else 0


def cmd_predict(args, err) -> int:
    state = open_state(args, write=False)
    learner = open_learner(args, state)
    for p in learner.problems:
        err(f"warning: {p}")
    require_samples(learner.store)
    results, failed = [], 0
    for path in args.images:
        try:
            p = learner.predict(load_image(path, size_hint=learner.backbone.input_size))
        except ImageError as exc:
            failed += 1
            results.append({"file": path, "error": str(exc)})
            if not args.json:
                err(str(exc))
            continue
        results.append(dict({"file": path}, **p.as_dict()))
        if not args.json:
            note = f" (closest: {p.best})" if p.unknown else ""
            print(f"{path}: {p.label} {p.confidence:.0%}{note}")
            for name, score in sorted(p.scores.items(), key=lambda kv: -kv[1]):
                print(f"  {score:6.1%}  {name}")
    if args.json:
        print(json.dumps({"state": str(state.root), "model": learner.backbone.name,
                          "head": learner.head_name, "results": results}, indent=2))
    return 1 if failed else 0


def cmd_eval(args, err) -> int:
    try:
        shots = parse_shots(args.shots) if isinstance(args.shots, str) else args.shots
    except ValueError as exc:
        raise EdgeClassifierError(f"--shots: {exc}") from None
    heads: List[str] = list(HEAD_NAMES) if args.head == "all" else [args.head]
    for h in heads:
        if h not in HEAD_NAMES:
            raise EdgeClassifierError(f"--head: unknown head {h!r}; known: all, "
                                      f"{', '.join(HEAD_NAMES)}")
    backbone = Backbone.from_name(args.model, num_threads=args.threads, resize=args.resize)
    augmentation = Augmentation(flip=not args.no_flip, crops=args.crops)
    views, y, class_names, errors = dataset_views(args.dataset, backbone, augmentation,
                                                  not args.quiet, err)
    val = None
    if args.val:
        vviews, vy, vnames, verrors = dataset_views(args.val, backbone, augmentation,
                                                    not args.quiet, err)
        unknown = sorted(set(vnames) - set(class_names))
        if unknown:
            raise EdgeClassifierError(f"--val has classes not in the training set: {unknown}")
        errors += verrors
        vy = np.array([class_names.index(vnames[i]) for i in vy])
        val = (vviews, vy)
    results = few_shot_eval(views, y, class_names, heads, shots, seeds=args.seeds, val=val,
                            progress=not args.quiet)
    if args.json:
        print(json.dumps({"dataset": os.path.abspath(args.dataset), "model": backbone.name,
                          "seeds": args.seeds, "augmentation": augmentation.key(),
                          "samples": int(len(y)),
                          "results": [r.as_dict() for r in results]}, indent=2))
    else:
        print(f"{args.dataset}: {len(y)} images, {len(class_names)} classes, {backbone.name}, "
              f"{args.seeds} seeds" + (f", validation {args.val}" if args.val else ""))
        print(format_table(results, shots))
        last = shots[-1]
        for r in results:
            if r.shots == last:
                print()
                print(format_report(r, class_names))
    return 1 if errors else 0


def cmd_export(args, err) -> int:
    """Copy every sample's thumbnail into OUT/<class>/ (a folder data set ``train`` reads)."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder; export into a new or an "
                         "existing folder")
    state = open_state(args, write=False)
    store = state.open_store()
    for p in state.problems:
        err(f"warning: {p}")
    copied = store.export_folders(out)
    missing = len(store) - copied
    print(f"{copied} thumbnails of {len(store.classes)} classes exported to {out}"
          + (f"; {missing} samples had no thumbnail" if missing else ""))
    return 0


def add_parsers(sub, backbone_opts, positive_int, err, common=None) -> None:
    """Register train, predict, export and eval on the main parser's subparsers.

    ``common`` is a parent parser with the options every command takes (``-v``). Head names
    and shots are checked here, at parse time, before any model is loaded.
    """
    parents = [common] if common is not None else []
    state_opt = {"metavar": "DIR", "help": "state directory (default: <data home>/state)"}
    quiet_opt = {"action": "store_true", "help": "no progress bars"}
    crops_opt = {"type": int, "default": 0, "choices": range(0, 6), "metavar": "0-5",
                 "help": "zoomed-crop views added per sample (0-5, default 0)"}

    def shots(text: str):
        try:
            return parse_shots(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    train_heads = HEAD_NAMES + ("multilabel",)
    p = sub.add_parser("train", parents=[backbone_opts] + parents,
                       help="import a data set (class folders or file,labels CSV) and fit")
    p.add_argument("dataset", metavar="DATASET",
                   help="folder with one subfolder of images per class, or a file,labels CSV")
    p.add_argument("--state", **state_opt)
    p.add_argument("--head", default=None, choices=train_heads, metavar="NAME",
                   help=f"{', '.join(train_heads)} (default: auto, or the head the state "
                        "was trained with; multilabel for a CSV with several labels per file)")
    p.add_argument("--no-flip", action="store_true", help="do not add mirrored views")
    p.add_argument("--crops", **crops_opt)
    p.add_argument("--no-thumbnails", action="store_true", help="store no thumbnails")
    p.add_argument("--max-samples-per-class", type=positive_int, default=None, metavar="N",
                   help=f"import at most N samples into a class (default {DEFAULT_MAX_SAMPLES}, "
                        "as head.max_samples_per_class)")
    p.add_argument("-q", "--quiet", **quiet_opt)
    p.set_defaults(func=functools.partial(cmd_train, err=err))

    p = sub.add_parser("predict", parents=parents,
                       help="predict images with what the state directory learned")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--state", **state_opt)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="interpreter threads (default: all cores)")
    p.set_defaults(func=functools.partial(cmd_predict, err=err))

    p = sub.add_parser("export", parents=parents,
                       help="export the samples' thumbnails as class folders")
    p.add_argument("out", metavar="OUT_DIR", help="folder to write <class>/<image> into")
    p.add_argument("--state", **state_opt)
    p.set_defaults(func=functools.partial(cmd_export, err=err))

    eval_heads = ("all",) + HEAD_NAMES
    p = sub.add_parser("eval", parents=[backbone_opts] + parents,
                       help="few-shot evaluation of heads on a folder data set")
    p.add_argument("dataset", metavar="DATASET_DIR",
                   help="folder with one subfolder of images per class")
    p.add_argument("--val", metavar="DIR", help="test on this folder instead of a 30%% split")
    p.add_argument("--shots", type=shots, default="1,5,10,20,all", metavar="K,K,...",
                   help="shots per class: positive integers or 'all' (default 1,5,10,20,all)")
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="random splits to average over (default 5)")
    p.add_argument("--head", default="auto", choices=eval_heads, metavar="NAME",
                   help=f"{', '.join(eval_heads)} (default auto)")
    p.add_argument("--no-flip", action="store_true", help="do not add mirrored views")
    p.add_argument("--crops", **crops_opt)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-q", "--quiet", **quiet_opt)
    p.set_defaults(func=functools.partial(cmd_eval, err=err))
