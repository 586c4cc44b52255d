"""The commented example configuration, written from the keys' specs (defaults, help, ranges)::

    print(example_text())     # what 'edge-classifier config --example' prints

Every key appears with its help above it and its default as its value; keys whose default
cannot be written in TOML (the host name, an unwired GPIO pin) and the ``[[classes]]`` tables
appear commented out with an example value. The text parses back to the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from typing import Any, List, get_type_hints

from edge_classifier.config.keys import item_type, spec_of
from edge_classifier.config.schema import Config

WIDTH = 96
HEADER = """\
edge-classifier configuration (TOML). Every key is optional: the values shown are the defaults;
keys shown commented out have no default that can be written here, and show an example value.
Unknown keys are errors, so a typo is caught before the device starts. Install as
/etc/edge-classifier/config.toml (or pass --config FILE); check it with
'edge-classifier config --check FILE'."""


def toml_value(value: Any) -> str:
    """``value`` (bool, int, float, str or a list of them) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _comment(text: str) -> List[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ",
                         break_on_hyphens=False)


def _help(f: dataclasses.Field) -> str:
    spec = spec_of(f)
    if spec.choices:
        return f"{spec.help} (one of: {', '.join(spec.choices)})"
    if spec.range:
        return f"{spec.help} ({spec.range[0]} to {spec.range[1]})"
    return spec.help


def _keys(cls: type, examples: bool = False) -> List[str]:
    """Help and ``key = default`` lines for the scalar keys of ``cls``; a key without a default
    that TOML can write shows its example, commented out unless ``examples``."""
    hints, lines = get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind) or item_type(kind) is not None:
            continue
        if lines:
            lines.append("")
        lines += _comment(_help(f))
        if f.default is dataclasses.MISSING or f.default is None:
            lines.append(f"{'' if examples else '# '}{f.name} = "
                         f"{toml_value(spec_of(f).example)}")
        else:
            lines.append(f"{f.name} = {toml_value(f.default)}")
    return lines


def example_text() -> str:
    """The commented example configuration: every key, with its help and default."""
    lines = _comment(HEADER.replace("\n", " ")) + [""] + _keys(Config)
    hints = get_type_hints(Config)
    for f in dataclasses.fields(Config):
        kind, help_text = hints[f.name], spec_of(f).help
        if dataclasses.is_dataclass(kind):
            lines += ["", "", *_comment(help_text), f"[{f.name}]", *_keys(kind)]
        elif item_type(kind) is not None:
            table = [f"[[{f.name}]]", *_keys(item_type(kind), examples=True)]
            lines += ["", "", *_comment(f"{help_text} An example; remove one '# ' from each "
                                        "line to use it:")]
            lines += [f"# {line}" if line else "#" for line in table]
    return "\n".join(lines) + "\n"
