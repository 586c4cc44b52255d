"""The ``edge-classifier`` command line.

Exit codes: 0 success; 1 an error, or some of a batch's files failed (the rest were still
processed); 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from edge_classifier import __version__
from edge_classifier.errors import EdgeClassifierError, ImageError

PROG = "edge-classifier"


def _err(message: str) -> None:
    try:
        from tqdm import tqdm
        tqdm.write(f"{PROG}: {message}", file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(f"{PROG}: {message}", file=sys.stderr)


def _progress_factory():
    from tqdm import tqdm

    def make(total=None, desc=""):
        return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                    disable=None, leave=False)
    return make


# -- models ------------------------------------------------------------------------------------
def cmd_models_list(args) -> int:
    from edge_classifier.backbone.integrity import MISSING, check_files
    from edge_classifier.backbone.manifest import load_manifest
    manifest = load_manifest()
    rows = []
    for c in check_files(manifest.entries):  # hashes a file only once per change
        e = c.entry
        rows.append({"name": e.name, "kind": e.kind, "installed": c.ok, "status": c.status,
                     "problem": c.problem or None,
                     "input_size": list(e.input_size) if e.input_size else None,
                     "path": str(c.path), "description": e.description})
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
        return 0
    for r in rows:
        mark = "-" if r["status"] == MISSING else r["status"]
        size = "x".join(map(str, r["input_size"])) if r["input_size"] else ""
        default = ""
        if r["name"] == manifest.default_embedding_model:
            default = " (default)"
        elif r["name"] == manifest.default_classifier_model:
            default = " (default for classify)"
        print(f"{r['name']:<50} {r['kind']:<10} {size:<8} {mark:<10} {r['description']}{default}")
    for r in rows:
        if r["problem"]:
            _err(f"{r['path']}: {r['status']} ({r['problem']}); run "
                 f"'{PROG} models fetch {r['name']}' to replace it")
    return 0


def cmd_models_fetch(args) -> int:
    from edge_classifier.backbone.fetch import fetch
    fetch(args.names or None, mirror=args.mirror, progress=_progress_factory(),
          log=(lambda s: None) if args.quiet else print)
    return 0


# -- classify / embed --------------------------------------------------------------------------
def _backbone(name: Optional[str], args, default_kind: str):
    from edge_classifier.backbone.model import Backbone
    from edge_classifier.backbone.manifest import load_manifest
    manifest = load_manifest()
    if name is None:
        name = (manifest.default_classifier_model if default_kind == "classifier"
                else manifest.default_embedding_model)
    return Backbone.from_name(name, num_threads=args.threads, resize=args.resize)


def cmd_classify(args) -> int:
    from edge_classifier.frames.images import load_image
    backbone = _backbone(args.model, args, "classifier")
    if not backbone.has_scores:
        raise EdgeClassifierError(f"{backbone.name} is an embedding extractor and cannot "
                                  "classify; pick a classifier with --model")
    results, failed = [], 0
    for path in args.images:
        try:
            result = backbone.run(load_image(path))
        except ImageError as exc:
            failed += 1
            results.append({"file": path, "error": str(exc)})
            if not args.json:
                _err(str(exc))
            continue
        top = [{"label": label, "probability": round(p, 6)}
               for label, p in backbone.top_k(result.scores, args.top)]
        results.append({"file": path, "top": top})
        if not args.json:
            print(path)
            for t in top:
                print(f"  {t['probability']:6.1%}  {t['label']}")
    if args.json:
        print(json.dumps({"model": backbone.name, "results": results}, indent=2))
    return 1 if failed else 0


def cmd_embed(args) -> int:
    from edge_classifier.core import atomic
    from edge_classifier.datasets.folders import embed_paths, scan_folder
    data = scan_folder(args.dataset)
    backbone = _backbone(args.model, args, "embedding")
    result = embed_paths(backbone, data.paths, progress=not args.quiet, on_error=_err)
    out = Path(args.out)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    paths = np.asarray(data.paths)[result.ok]
    with atomic.atomic_writer(out) as f:
        np.savez(f, embeddings=result.embeddings, labels=data.labels[result.ok],
                 class_names=np.asarray(data.class_names), paths=paths,
                 model=np.asarray(backbone.name), model_sha256=np.asarray(backbone.sha256),
                 resize=np.asarray(backbone.resize))
    print(f"{len(paths)} embeddings ({backbone.embedding_dim}-d, {backbone.name}) of "
          f"{len(data.class_names)} classes written to {out}"
          + (f"; {len(result.errors)} files failed" if result.errors else ""))
    return 1 if result.errors else 0


# -- parser ------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Teach a camera new classes on the spot, on a Raspberry Pi.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    backbone_opts = argparse.ArgumentParser(add_help=False)
    backbone_opts.add_argument("--model", help="model name from 'edge-classifier models list'")
    backbone_opts.add_argument("--threads", type=_positive_int, default=None,
                               help="interpreter threads (default: all cores)")
    backbone_opts.add_argument("--resize", choices=("crop", "squash"), default="crop",
                               help="centre-crop (default) or squash frames to the model input")

    models = sub.add_parser("models", help="list or fetch models and sample files")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    p = msub.add_parser("list", help="list the models in the manifest and what is installed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = msub.add_parser("fetch", help="download models (default: all) into the data directory")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--mirror", metavar="DIR",
                   help="copy from a local folder instead of downloading "
                        "(default: $EDGE_CLASSIFIER_MODEL_MIRROR)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_models_fetch)

    p = sub.add_parser("classify", parents=[backbone_opts],
                       help="print the top ImageNet labels of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top", type=_positive_int, default=5, help="labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("embed", parents=[backbone_opts],
                       help="embed a folder data set (one subfolder per class) into an .npz")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)

    from edge_classifier.cli import learn as cli_learn
    cli_learn.add_parsers(sub, backbone_opts, _positive_int, _err)
    from edge_classifier.cli import device as cli_device
    cli_device.add_parsers(sub, _positive_int, _err)

    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EdgeClassifierError as exc:
        _err(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # e.g. piped into head
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
