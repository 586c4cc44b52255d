"""Reading a config: TOML in, a validated frozen :class:`~edge_classifier.config.schema.Config`
out, or one :class:`~edge_classifier.errors.ConfigError` line naming the file and the key::

    config = load_config("/etc/edge-classifier/config.toml")
    config = parse_config('[smoothing]\\nframes = 5\\n', "inline")
    parse_config("[smoothing]\\nframez = 5\\n")  # ConfigError: unknown key smoothing.framez
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Optional, get_type_hints

from edge_classifier.config.keys import check_value, item_type, shown, spec_of
from edge_classifier.config.schema import Config
from edge_classifier.config.validation import validate_config
from edge_classifier.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PATH = "/etc/edge-classifier/config.toml"


def _build(cls, data: Any, prefix: str):
    """``cls`` from a TOML table: unknown keys, wrong types and out-of-range values raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {shown(data)}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        name = unknown[0] if unknown[0].isidentifier() else shown(unknown[0])
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(f"unknown key {prefix + '.' if prefix else ''}{name} in {where}; "
                          f"known keys: {', '.join(sorted(known))}")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required")
            continue
        kind, raw = hints[f.name], data[f.name]
        inner = item_type(kind)
        if dataclasses.is_dataclass(kind):
            values[f.name] = _build(kind, raw, key)
        elif inner is not None:
            if not isinstance(raw, list):
                raise ConfigError(f"{key}: expected [[{key}]] tables")
            values[f.name] = tuple(_build(inner, item, f"{key}[{i}]")
                                   for i, item in enumerate(raw))
        else:
            values[f.name] = check_value(key, raw, kind, spec_of(f))
    return cls(**values)


def parse_config(text: str, source: str = "config") -> Config:
    """Parse TOML text into a validated :class:`Config`; errors start with ``source``."""
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, a huge integer, deep nesting
        reason = exc if isinstance(exc, ValueError) else "nested too deeply"
        raise ConfigError(f"{source}: not valid TOML ({reason})") from None
    try:
        return validate_config(_build(Config, data, ""))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: Optional[str] = None) -> Config:
    """Read ``path``; with None, the default file if it exists, else the defaults."""
    if path is None:
        if not os.path.exists(DEFAULT_PATH):
            return validate_config(Config())
        path = DEFAULT_PATH
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    return parse_config(text, path)
