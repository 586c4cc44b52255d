"""Running the device as a program: config with overrides, the last good config, signals.

``edge-classifier run`` is :func:`load_run_config` + :func:`start_device` + :func:`run_device`::

    config, text = load_run_config(path, overrides)
    device = start_device(config)
    run_device(device, frames=None, keep_config=text)   # until SIGTERM / SIGINT / the end
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Tuple

from edge_classifier.config import (DEFAULT_PATH, Config, load_config, parse_broker_url, parse_config,
                                   validate_config)
from edge_classifier.core.paths import default_state_dir
from edge_classifier.device.loop import Device
from edge_classifier.errors import ConfigError, StoreError
from edge_classifier.learning.state import StateDir

log = logging.getLogger("edge_classifier.run")


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("INVOCATION_ID") \
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"  # journald adds its own time
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


@dataclass(frozen=True)
class Overrides:
    """What the command line says over the config file (empty: the file's value)."""

    state: str = ""
    model: str = ""
    source: str = ""
    broker: str = ""


def apply_overrides(config: Config, o: Overrides) -> Config:
    """--state, --source, --broker and --model over the config file, checked like it."""
    if o.state:
        config = replace(config, state_dir=o.state)
    if o.model:
        config = replace(config, model=replace(config.model, name=o.model))
    if o.source:
        kind, _, path = o.source.partition(":")
        if kind not in ("replay", "picamera2", "auto"):
            raise ConfigError(f"--source: expected replay:PATH, picamera2 or auto, not "
                              f"{o.source!r}")
        if kind == "replay" and not path:
            raise ConfigError("--source replay: needs a folder or image, e.g. replay:photos/")
        config = replace(config, source=replace(config.source, kind=kind,
                                                path=path or config.source.path))
    if o.broker:
        try:
            parse_broker_url(o.broker)
        except ValueError as exc:
            raise ConfigError(f"--broker: {exc}") from None
        config = replace(config, mqtt=replace(config.mqtt, broker=o.broker))
    return config


def state_root(config: Config, o: Overrides = Overrides()) -> Path:
    return Path(o.state or config.state_dir or default_state_dir()).expanduser()


def load_run_config(path: Optional[str], o: Overrides = Overrides()) -> Tuple[Config, Optional[str]]:
    """(config, its text) for ``run``. A config that cannot be read or is invalid is an error,
    unless the state directory keeps the last config this device started with: then that one
    is used and the problem logged (a device in a shed keeps running after a bad edit); its
    text is then None (it is already the kept one)."""
    path = path or (DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else None)
    try:
        config = load_config(path)
        text = Path(path).read_text("utf-8") if path else None
    except ConfigError as exc:
        kept = StateDir(Path(o.state).expanduser() if o.state else default_state_dir(),
                        write=False).last_good_config()
        if kept is None:
            raise
        backup_text, backup = kept
        log.error("%s; using the last config that worked, %s", exc, backup)
        config, text = parse_config(backup_text, str(backup)), None
    return validate_config(apply_overrides(config, o)), text  # options pass the same rules


def start_device(config: Config, **parts) -> Device:
    """The device ``config`` describes (parts as in :class:`Device`)."""
    return Device(config, **parts)


def run_device(device: Device, frames: Optional[int] = None,
               keep_config: Optional[str] = None) -> int:
    """Run with SIGTERM/SIGINT mapped to a clean stop; restore the handlers after. Once the
    first frame went through, ``keep_config`` is kept as the last good config."""
    previous = {}

    def handler(signum, frame):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        device.stop()

    def started() -> None:
        if keep_config is None:
            return
        try:
            device.state_dir.keep_good_config(keep_config)
        except StoreError as exc:
            log.warning("cannot keep a copy of the config: %s", exc)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    try:
        device.run(frames=frames, on_started=started)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        device.close()
    return 0
