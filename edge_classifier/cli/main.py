"""The ``edge-classifier`` command line::

    sys.exit(main(["classify", "cat.jpg", "--top", "3"]))

Exit codes: 0 success; 1 an error, or some of a batch's files failed (the rest were still
processed); 2 a usage error (a bad argument, an unknown model or head, a wrong config).
Every error is one line on standard error starting ``edge-classifier:``, never a traceback;
``-v``/``--verbose`` or ``EDGE_CLASSIFIER_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np
from tqdm import tqdm

from edge_classifier import __version__
from edge_classifier.backbone.fetch import fetch
from edge_classifier.backbone.integrity import MISSING, check_files
from edge_classifier.backbone.manifest import load_manifest
from edge_classifier.backbone.model import Backbone
from edge_classifier.core import atomic, memory
from edge_classifier.datasets.embedcache import embed_files
from edge_classifier.datasets.folders import scan_folder
from edge_classifier.frames.images import load_image
from edge_classifier.learning.augment import Augmentation
from edge_classifier.cli import device as cli_device
from edge_classifier.cli import export as cli_export
from edge_classifier.cli import learn as cli_learn
from edge_classifier.errors import (BrokerUrlError, ConfigError, EdgeClassifierError, ImageError,
                                    UnknownModelError, UsageError)

PROG = "edge-classifier"
DEBUG_ENV = "EDGE_CLASSIFIER_DEBUG"
#: Errors that mean "the command was asked for something wrong": exit status 2.
USAGE_ERRORS = (UsageError, UnknownModelError, ConfigError, BrokerUrlError)
TRACEBACK_HINT = f"run with -v or {DEBUG_ENV}=1 for the traceback"


def _err(message: str) -> None:
    """Print ``message`` to standard error, every line prefixed ``edge-classifier:``."""
    text = "\n".join(f"{PROG}: {line}" for line in str(message).splitlines() or [""])
    tqdm.write(text, file=sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning for the CLI: one line, no source location."""
    _err(f"warning: {_one_line(message)}")


def _progress_factory():

    def make(total=None, desc=""):
        return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                    disable=None, leave=False)
    return make


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit with status 2::

        edge-classifier: error: eval: argument --shots: ...; see 'edge-classifier eval --help'
    """

    def error(self, message: str):
        command = self.prog[len(PROG):].strip() if self.prog.startswith(PROG) else self.prog
        where = f"{command}: " if command else ""
        self.exit(2, f"{PROG}: error: {where}{_one_line(message)}; see '{self.prog} --help'\n")


# -- models ------------------------------------------------------------------------------------
def cmd_models_list(args) -> int:
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
    fetch(args.names or None, mirror=args.mirror, progress=_progress_factory(),
          log=(lambda s: None) if args.quiet else print)
    return 0


# -- classify / embed --------------------------------------------------------------------------
def _backbone(name: Optional[str], args, default_kind: str):
    manifest = load_manifest()
    if name is None:
        name = (manifest.default_classifier_model if default_kind == "classifier"
                else manifest.default_embedding_model)
    return Backbone.from_name(name, num_threads=args.threads, resize=args.resize)


def cmd_classify(args) -> int:
    backbone = _backbone(args.model, args, "classifier")
    if not backbone.has_scores:
        raise EdgeClassifierError(f"{backbone.name} is an embedding extractor and cannot "
                                  "classify; pick a classifier with --model")
    results, failed = [], 0
    for path in args.images:
        try:
            result = backbone.run(load_image(path, size_hint=backbone.input_size))
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


def embed_output_path(text: str) -> Path:
    """The file ``embed --out TEXT`` writes (``.npz`` added when missing), checked before any
    work is done: a :class:`UsageError` if it names a folder or its folder does not exist::

        embed_output_path("out/trash")   # Path("out/trash.npz"), if out/ is a folder
    """
    given = Path(text)
    if given.is_dir():  # also "", "." and "/", which have no file name to add .npz to
        raise UsageError(f"--out {text}: is a folder; name a file in it, e.g. "
                         f"{given / 'embeddings.npz'}")
    out = given if given.suffix == ".npz" else given.with_name(given.name + ".npz")
    if out.is_dir():
        raise UsageError(f"--out {text}: {out} is a folder; name a file, e.g. "
                         f"{out / 'embeddings.npz'}")
    folder = out.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"--out {text}: {folder} {what}; create it first or pick another "
                         "place")
    return out


def cmd_embed(args) -> int:
    out = embed_output_path(args.out)
    data = scan_folder(args.dataset)
    backbone = _backbone(args.model, args, "embedding")
    views, ok, errors = embed_files(backbone, data.paths, Augmentation(flip=False),
                                    progress=not args.quiet, on_error=_err)
    paths = np.asarray(data.paths)[ok]
    with atomic.atomic_writer(out) as f:
        np.savez(f, embeddings=views[:, 0], labels=data.labels[ok],
                 class_names=np.asarray(data.class_names), paths=paths,
                 model=np.asarray(backbone.name), model_sha256=np.asarray(backbone.sha256),
                 resize=np.asarray(backbone.resize))
    print(f"{len(paths)} embeddings ({backbone.embedding_dim}-d, {backbone.name}) of "
          f"{len(data.class_names)} classes written to {out}"
          + (f"; {len(errors)} files failed" if errors else ""))
    return 1 if errors else 0


# -- parser ------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


VERBOSE_HELP = "show the traceback of an error (run: also debug logging)"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command, every option with its help text."""
    parser = Parser(
        prog=PROG, description="Teach a camera new classes on the spot, on a Raspberry Pi.",
        epilog=f"Exit status: 0 success, 1 an error, 2 a usage error. {DEBUG_ENV}=1 or -v "
               "shows the traceback of an error.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="one of the commands below ('COMMAND --help' for its options)")
    sub.required = True

    # -v after the command too; SUPPRESS keeps a -v given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help=VERBOSE_HELP)

    backbone_opts = argparse.ArgumentParser(add_help=False)
    backbone_opts.add_argument("--model", help="model name from 'edge-classifier models list'")
    backbone_opts.add_argument("--threads", type=_positive_int, default=None,
                               help="interpreter threads (default: all cores)")
    backbone_opts.add_argument("--resize", choices=("crop", "squash"), default="crop",
                               help="centre-crop (default) or squash frames to the model input")

    models = sub.add_parser("models", help="list or fetch models and sample files")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION",
                                 help="list or fetch")
    msub.required = True
    p = msub.add_parser("list", parents=[common],
                        help="list the models in the manifest and what is installed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_models_list)
    p = msub.add_parser("fetch", parents=[common],
                        help="download models (default: all) into the data directory")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="models or files to fetch (default: everything in the manifest)")
    p.add_argument("--mirror", metavar="DIR",
                   help="copy from a local folder instead of downloading "
                        "(default: $EDGE_CLASSIFIER_MODEL_MIRROR)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=cmd_models_fetch)

    p = sub.add_parser("classify", parents=[backbone_opts, common],
                       help="print the top ImageNet labels of images")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--top", type=_positive_int, default=5, help="labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("embed", parents=[backbone_opts, common],
                       help="embed a folder data set (one subfolder per class) into an .npz")
    p.add_argument("dataset", metavar="DIR", help="folder with one subfolder of images per class")
    p.add_argument("--out", required=True, metavar="FILE.npz",
                   help="file to write (.npz is added if missing; its folder must exist)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)

    cli_learn.add_parsers(sub, backbone_opts, _positive_int, _err, common=common)
    cli_device.add_parsers(sub, _positive_int, common=common)
    cli_export.add_parsers(sub, _positive_int, _err, common=common)
    return parser


def _debugging(args) -> bool:
    return bool(getattr(args, "verbose", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; returns the exit status (argparse exits with 2 on a bad command line).

    Every error is reported as one line (:data:`USAGE_ERRORS` exit 2, any other error 1);
    with ``-v`` or ``EDGE_CLASSIFIER_DEBUG=1`` its traceback is printed first.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = _debugging(args)
    memory.release_large_frees()  # a fit's large temporaries go back to the system when freed
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return run_command(args, debug)


def run_command(args, debug: bool = False) -> int:
    """Call ``args.func(args)`` and turn any exception into one line and an exit status."""
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # e.g. piped into head
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
    except USAGE_ERRORS as exc:
        _report(f"error: {exc}", debug)
        return 2
    except EdgeClassifierError as exc:
        _report(f"error: {exc}", debug)
        return 1
    except OSError as exc:  # a file or folder the command needed: name it, say what failed
        where = f"{exc.filename}: " if exc.filename else ""
        what = exc.strerror or str(exc) or type(exc).__name__
        _report(f"error: {where}{_one_line(what)} ({TRACEBACK_HINT})", debug)
        return 1
    except Exception as exc:  # a bug: still one line, the traceback on request
        _report(f"error: unexpected {type(exc).__name__}: {_one_line(exc)} ({TRACEBACK_HINT})",
                debug)
        return 1


def _report(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)
    _err(message)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
