"""``edge-classifier run``, ``demo`` and ``config``: the device from the command line."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import tempfile
from typing import Optional

from edge_classifier.errors import ConfigError

log = logging.getLogger("edge_classifier.cli.main")


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("INVOCATION_ID") \
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"  # journald adds its own time
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


def apply_overrides(config, args):
    """--state, --source, --broker and --model override the config file."""
    from dataclasses import replace
    if getattr(args, "state", None):
        config = replace(config, state_dir=args.state)
    if getattr(args, "model", None):
        config = replace(config, model=replace(config.model, name=args.model))
    if getattr(args, "source", None):
        kind, _, path = args.source.partition(":")
        if kind not in ("replay", "picamera2", "auto"):
            raise ConfigError(f"--source: expected replay:PATH, picamera2 or auto, not "
                              f"{args.source!r}")
        if kind == "replay" and not path:
            raise ConfigError("--source replay: needs a folder or image, e.g. replay:photos/")
        config = replace(config, source=replace(config.source, kind=kind,
                                                path=path or config.source.path))
    if getattr(args, "broker", None):
        from edge_classifier.comms.mqtt import parse_broker_url
        parse_broker_url(args.broker)  # validate now, with a clear message
        config = replace(config, mqtt=replace(config.mqtt, broker=args.broker))
    return config


def run_device(device, frames: Optional[int]) -> int:
    """Run with SIGTERM/SIGINT mapped to a clean stop; restore the handlers after."""
    previous = {}

    def handler(signum, frame):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        device.stop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    try:
        device.run(frames=frames)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        device.close()
    return 0


LAST_GOOD = "config.last-good.toml"


def load_run_config(args):
    """The config for ``run``. A config that cannot be read or is invalid is an error, unless
    a copy of the last config this device started with is in the state directory: then that
    one is used and the problem logged (a device in a shed keeps running after a bad edit).
    Every config that starts the device is kept as that copy."""
    from pathlib import Path

    from edge_classifier.core import atomic
    from edge_classifier.config import DEFAULT_PATH, load_config, parse_config, validate_config
    from edge_classifier.core.paths import default_state_dir
    path = args.config or (DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else None)
    try:
        config = load_config(path)
        text = Path(path).read_text("utf-8") if path else None
    except ConfigError as exc:
        state = Path(args.state or default_state_dir()).expanduser()
        backup = state / LAST_GOOD
        if not backup.is_file():
            raise
        log.error("%s; using the last config that worked, %s", exc, backup)
        config, text = parse_config(backup.read_text("utf-8"), str(backup)), None
    config = validate_config(apply_overrides(config, args))  # the options pass the same rules
    if text is not None:
        state = Path(config.state_dir or default_state_dir()).expanduser()
        try:
            state.mkdir(parents=True, exist_ok=True)
            atomic.write_text(state / LAST_GOOD, text)
        except OSError as exc:
            log.warning("cannot keep a copy of the config in %s: %s", state, exc)
    return config


def cmd_run(args, err) -> int:
    setup_logging(args.verbose)
    config = load_run_config(args)
    from edge_classifier.device.loop import Device
    device = Device(config)
    log.info("running: model %s, head %s, %d classes, state %s, publishing to %s",
             device.backbone.name, config.head.name, len(device.store.classes), device.store.root,
             "MQTT" if config.mqtt.broker else "standard output")
    return run_device(device, args.frames)


def cmd_config(args, err) -> int:
    from edge_classifier.config import example_text, load_config
    if args.example:
        sys.stdout.write(example_text())
        return 0
    config = load_config(args.check)
    print(f"{args.check or 'defaults'}: OK ({len(config.classes)} classes, "
          f"source {config.source.kind}, broker {'set' if config.mqtt.broker else 'none'})")
    return 0


def cmd_demo(args, err) -> int:
    from edge_classifier.device.demo import run_demo
    setup_logging(False)
    state = args.state
    if state:
        return run_demo(state, mirror=args.mirror, broker=args.broker, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="edge-classifier-demo-") as tmp:
        return run_demo(tmp, mirror=args.mirror, broker=args.broker, threads=args.threads)


def add_parsers(sub, positive_int, err) -> None:
    p = sub.add_parser("run", help="run the device: camera or replay, buttons, MQTT")
    p.add_argument("--config", metavar="FILE",
                   help="TOML config (default /etc/edge-classifier/config.toml if it exists)")
    p.add_argument("--state", metavar="DIR", help="state directory (overrides the config)")
    p.add_argument("--source", metavar="SOURCE", help="replay:DIR_OR_FILES, picamera2 or auto")
    p.add_argument("--broker", metavar="URL", help="mqtt://[user:pass@]host[:port] or mqtts://")
    p.add_argument("--model", help="model name (overrides the config)")
    p.add_argument("--frames", type=positive_int, help="stop cleanly after N frames")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=functools.partial(cmd_run, err=err))

    p = sub.add_parser("config", help="print an example config, or check one")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--example", action="store_true", help="print a commented example")
    group.add_argument("--check", metavar="FILE", help="validate a config file")
    p.set_defaults(func=functools.partial(cmd_config, err=err))

    p = sub.add_parser("demo", help="the built-in demo: teach, predict, publish (< 1 min)")
    p.add_argument("--mirror", metavar="DIR", help="local folder to fetch files from")
    p.add_argument("--broker", metavar="URL", help="publish to this MQTT broker")
    p.add_argument("--state", metavar="DIR", help="keep what it learns here (default: temporary)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.set_defaults(func=functools.partial(cmd_demo, err=err))

