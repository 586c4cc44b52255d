"""``edge-classifier train``, ``predict`` and ``eval``: on-device learning from the command line."""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from edge_classifier.datasets.evaluate import parse_shots
from edge_classifier.errors import EdgeClassifierError, ImageError
from edge_classifier.learning.heads import HEAD_NAMES

IMPORTS = "imports.json"


def state_dir(args) -> Path:
    from edge_classifier.core.paths import default_state_dir
    return Path(args.state).expanduser() if args.state else default_state_dir()


def stored_model(root: Path) -> Optional[str]:
    """The model a state directory's samples were embedded with, if any."""
    try:
        return json.loads((root / "store.json").read_text("utf-8"))["backbone"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_learner(args, model: Optional[str] = None, load: bool = True):
    from edge_classifier.learning.augment import Augmentation
    from edge_classifier.backbone.model import Backbone
    from edge_classifier.learning.learner import Learner
    from edge_classifier.learning.store import SampleStore
    root = state_dir(args)
    name = model or stored_model(root)
    head = getattr(args, "head", None) or saved_head_name(root) or "auto"
    backbone = Backbone.from_name(name, num_threads=args.threads,
                                  resize=getattr(args, "resize", None) or "crop")
    store = SampleStore(root, backbone=backbone.identity)
    augmentation = Augmentation(flip=not getattr(args, "no_flip", False),
                                crops=getattr(args, "crops", 0) or 0)
    return Learner(backbone, store, head_name=head, augmentation=augmentation, load=load)


def saved_head_name(root: Path) -> Optional[str]:
    """The head a state directory was last trained with (e.g. multilabel), if any."""
    try:
        return json.loads((root / "head.json").read_text("utf-8"))["edge_classifier"]["head"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load_dataset(path: str):
    """(paths, label lists, class names) of a folder data set or a ``file,labels`` CSV."""
    from edge_classifier.datasets.folders import read_csv, scan_folder
    if os.path.isfile(path) and path.lower().endswith(".csv"):
        data = read_csv(path)
        return data.paths, data.label_sets, data.class_names
    data = scan_folder(path)
    return data.paths, [[data.class_names[i]] for i in data.labels], data.class_names


def dataset_views(dataset: str, backbone, augmentation, progress: bool = False, err=None):
    """(NxVxD views, N labels, class names, errors) of a single-label data set, cached."""
    from edge_classifier.datasets.embedcache import embed_files
    paths, label_sets, class_names = _load_dataset(dataset)
    if any(len(s) != 1 for s in label_sets):
        raise EdgeClassifierError(f"{dataset}: needs one label per file (a folder data set)")
    y = np.array([class_names.index(s[0]) for s in label_sets])
    views, ok, errors = embed_files(backbone, paths, augmentation, progress=progress,
                                    on_error=err)
    return views, y[ok], class_names, errors


def cmd_train(args, err) -> int:
    from edge_classifier.core import atomic
    from edge_classifier.datasets.embedcache import embed_files
    from edge_classifier.frames.images import load_image
    paths, label_sets, class_names = _load_dataset(args.dataset)
    if args.head is None:
        multi = any(len(s) != 1 for s in label_sets)
        args.head = "multilabel" if multi else (saved_head_name(state_dir(args)) or "auto")
    learner = open_learner(args, args.model, load=False)
    for p in learner.problems:
        err(f"warning: {p}")
    store = learner.store
    imports_path = store.root / IMPORTS
    try:
        imported = json.loads(imports_path.read_text("utf-8"))
    except (OSError, ValueError):
        imported = {}
    views, ok, errors = embed_files(learner.backbone, paths, learner.augmentation,
                                    progress=not args.quiet, on_error=err)
    for name in class_names:
        store.add_class(name)
    rows = iter(views)
    added = skipped = 0
    todo = [(p, labels, next(rows)) for p, labels, good in zip(paths, label_sets, ok) if good]
    iterator = todo
    if not args.quiet:
        from tqdm import tqdm
        iterator = tqdm(todo, desc="storing", unit="sample", disable=None, leave=False)
    try:
        for path, labels, sample_views in iterator:
            key = os.path.abspath(path)
            previous = imported.get(key)
            if previous and all(previous["id"] in store.sample_ids(c) for c in labels
                                if c in store.classes):
                skipped += 1
                continue
            thumb = None
            if not args.no_thumbnails:
                try:
                    thumb = load_image(path)
                except ImageError:
                    pass
            sid = store.new_sample_id()
            for label in labels:
                store.add_sample(label, sample_views, thumb, sample_id=sid)
            imported[key] = {"id": sid, "labels": labels}
            added += 1
    finally:
        atomic.write_text(imports_path, json.dumps(imported))
    learner.fit()
    learner.save()
    counts = ", ".join(f"{k} {v}" for k, v in store.counts().items())
    head = learner.head
    print(f"{added} samples added ({skipped} already imported) to {store.root}")
    print(f"classes: {counts}")
    if head is not None:
        print(f"head: {getattr(head, 'name', learner.head_name)} fitted on "
              f"{len(store)} samples in {learner.last_fit_ms:.0f} ms")
    return 1 if errors else 0


def cmd_predict(args, err) -> int:
    from edge_classifier.frames.images import load_image
    from edge_classifier.learning.learner import require_samples
    learner = open_learner(args)
    for p in learner.problems:
        err(f"warning: {p}")
    require_samples(learner.store)
    results, failed = [], 0
    for path in args.images:
        try:
            p = learner.predict(load_image(path))
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
        print(json.dumps({"state": str(learner.store.root), "model": learner.backbone.name,
                          "head": learner.head_name, "results": results}, indent=2))
    return 1 if failed else 0


def cmd_eval(args, err) -> int:
    from edge_classifier.learning.augment import Augmentation
    from edge_classifier.backbone.model import Backbone
    from edge_classifier.datasets.evaluate import few_shot_eval, format_report, format_table, parse_shots
    from edge_classifier.learning.heads import HEAD_NAMES
    try:
        shots = parse_shots(args.shots)
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
    from edge_classifier.learning.store import SampleStore
    root = state_dir(args)
    if not (root / "store.json").is_file():
        raise EdgeClassifierError(f"{root} is not a state directory (no store.json)")
    store = SampleStore(root)
    copied = store.export_folders(args.out)
    missing = len(store) - copied
    print(f"{copied} thumbnails of {len(store.classes)} classes exported to {args.out}"
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
