"""``edge-classifier run``, ``demo`` and ``config``: the device from the command line."""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import replace

from edge_classifier.config import example_text, load_config, validate_config
from edge_classifier.device.demo import demo_config, run_demo
from edge_classifier.device.runner import (Overrides, load_run_config, run_device, setup_logging,
                                           start_device)

log = logging.getLogger("edge_classifier.cli")


def cmd_run(args) -> int:
    setup_logging(args.verbose)
    overrides = Overrides(state=args.state or "", model=args.model or "",
                          source=args.source or "", broker=args.broker or "")
    config, text = load_run_config(args.config, overrides)
    if args.web:  # the web studio's address over the config's, checked like it
        config = validate_config(replace(config, web=replace(config.web, listen=args.web)))
    device = start_device(config)
    log.info("running: model %s, head %s, %d classes, state %s, publishing to %s",
             device.backbone.name, device.learner.head_name, len(device.store.classes),
             device.store.root, "MQTT" if config.mqtt.broker else "standard output")
    return run_device(device, args.frames, keep_config=text)


def cmd_config(args) -> int:
    if args.example:
        sys.stdout.write(example_text())
        return 0
    config = load_config(args.check)
    print(f"{args.check or 'defaults'}: OK ({len(config.classes)} classes, "
          f"source {config.source.kind}, broker {'set' if config.mqtt.broker else 'none'})")
    return 0


def cmd_demo(args) -> int:
    setup_logging(False)
    state = args.state
    options = dict(mirror=args.mirror, broker=args.broker, threads=args.threads,
                   web=args.web or "")
    if args.web:
        validate_config(demo_config(args.broker, args.threads, args.web))  # one clear line
    if state:
        return run_demo(state, **options)
    with tempfile.TemporaryDirectory(prefix="edge-classifier-demo-") as tmp:
        return run_demo(tmp, **options)


def add_parsers(sub, positive_int, common=None) -> None:
    """Register run, config and demo on the main parser's subparsers.

    ``common`` is a parent parser with the options every command takes (``-v``; for ``run``
    it also turns on debug logging).
    """
    parents = [common] if common is not None else []
    p = sub.add_parser("run", parents=parents,
                       help="run the device: camera or replay, buttons, MQTT")
    p.add_argument("--config", metavar="FILE",
                   help="TOML config (default /etc/edge-classifier/config.toml if it exists)")
    p.add_argument("--state", metavar="DIR", help="state directory (overrides the config)")
    p.add_argument("--source", metavar="SOURCE", help="replay:DIR_OR_FILES, picamera2 or auto")
    p.add_argument("--broker", metavar="URL", help="mqtt://[user:pass@]host[:port] or mqtts://")
    p.add_argument("--model", help="model name (overrides the config)")
    p.add_argument("--frames", type=positive_int, metavar="N",
                   help="stop cleanly after N frames")
    p.add_argument("--web", metavar="[HOST:]PORT",
                   help="serve the web studio there (overrides web.listen; HOST defaults to "
                        "127.0.0.1, any other needs web.password)")
    if common is None:
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", parents=parents, help="print an example config, or check one")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--example", action="store_true", help="print a commented example")
    group.add_argument("--check", metavar="FILE", help="validate a config file")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", parents=parents,
                       help="the built-in demo: teach, predict, publish (< 1 min)")
    p.add_argument("--mirror", metavar="DIR", help="local folder to fetch files from")
    p.add_argument("--broker", metavar="URL", help="publish to this MQTT broker")
    p.add_argument("--state", metavar="DIR", help="keep what it learns here (default: temporary)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="interpreter threads (default: all cores)")
    p.add_argument("--web", metavar="[HOST:]PORT",
                   help="serve the web studio there and keep the demo running until Ctrl-C")
    p.set_defaults(func=cmd_demo)
