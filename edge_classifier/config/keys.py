"""One place per config key: its default, help text, range or choices, kept together.

::

    @dataclass(frozen=True)
    class SmoothingConfig:
        frames: int = key(3, help="frames that must agree", range=(1, 1000))

    spec_of(fields(SmoothingConfig)[0]).range       # -> (1, 1000)
    for dotted, f, kind in walk(Config): ...         # every key: "smoothing.frames", ...

:func:`check_value` applies a key's type, choices and range to a value read from TOML, and the
example file (:mod:`edge_classifier.config.example`) is written from the same specs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple, get_args, get_origin, get_type_hints

from edge_classifier.errors import ConfigError

_MISSING = dataclasses.MISSING
GPIO_PINS = (0, 63)


@dataclass(frozen=True)
class KeySpec:
    """What the config knows about one key besides its default."""

    help: str
    range: Optional[Tuple[float, float]] = None  # inclusive
    choices: Optional[Tuple[str, ...]] = None
    example: Any = None  # shown (commented out) when the default cannot be written in TOML


def key(default: Any = _MISSING, *, help: str, range: Optional[Tuple[float, float]] = None,
        choices: Optional[Tuple[str, ...]] = None, factory: Any = _MISSING,
        example: Any = None) -> Any:
    """A dataclass field whose metadata holds the key's :class:`KeySpec`.

    ``factory`` computes the default at construction (e.g. the host name); ``example`` is the
    value the example file shows for a key without a writable default (None, a factory).
    """
    if not help:
        raise ValueError("every config key needs help text")
    metadata = {"spec": KeySpec(help, range, tuple(choices) if choices else None, example)}
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def pin(help: str, example: int) -> Any:
    """An optional GPIO (BCM) pin number: None (not wired) or 0..63."""
    return key(None, help=help, range=GPIO_PINS, example=example)


def spec_of(f: dataclasses.Field) -> KeySpec:
    """The :class:`KeySpec` of a field made by :func:`key`."""
    return f.metadata["spec"]


def item_type(kind: Any) -> Optional[type]:
    """``X`` for ``Tuple[X, ...]`` of a dataclass ``X`` (a list of tables), else None."""
    args = get_args(kind)
    if get_origin(kind) is tuple and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def walk(cls: type, prefix: str = "") -> Iterator[Tuple[str, dataclasses.Field, Any]]:
    """``(dotted key, field, type)`` for every scalar key under ``cls``, depth first in field
    order; a list of tables (``classes``) contributes its item's keys as ``classes.name``."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        kind = hints[f.name]
        inner = kind if dataclasses.is_dataclass(kind) else item_type(kind)
        if inner is not None:
            yield from walk(inner, dotted)
        else:
            yield dotted, f, kind


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters (error messages stay one line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_value(dotted: str, value: Any, kind: Any, spec: KeySpec) -> Any:
    """``value`` checked against the key's type, choices and range (ints become floats for
    float keys); raises :class:`ConfigError` naming ``dotted``."""
    if kind == Tuple[float, ...]:
        return _check_numbers(dotted, value, spec)
    optional = kind == Optional[int]
    if optional:
        if value is None or value == "":
            return None
        kind = int
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted}: expected true or false, got {shown(value)}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{dotted}: expected a whole number, got {shown(value)}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{dotted}: expected a number, got {shown(value)}")
        try:
            value = float(value)
        except OverflowError:  # a whole number too large for a float
            raise ConfigError(f"{dotted}: too large ({len(str(value))} digits)") from None
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{dotted}: expected text, got {shown(value)}")
        if "\0" in value:
            raise ConfigError(f"{dotted}: must not contain a NUL character")
    if spec.choices and value not in spec.choices:
        listed = ", ".join(c or '""' for c in spec.choices)
        raise ConfigError(f"{dotted}: must be one of {listed}, "
                          f"not {shown(value)}")
    if spec.range:
        lo, hi = spec.range
        if not lo <= value <= hi:
            what = "GPIO pin " if optional else ""
            raise ConfigError(f"{dotted}: {what}must be between {lo} and {hi}, "
                              f"not {shown(value)}")
    return value


def _check_numbers(dotted: str, value: Any, spec: KeySpec) -> Tuple[float, ...]:
    """A list of numbers (``source.crop``) as a tuple of floats (what they must be is checked
    with the rules between keys, :mod:`~edge_classifier.config.validation`)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{dotted}: expected a list of numbers like [0.25, 0, 0.75, 1], "
                          f"got {shown(value)}")
    out = []
    for i, item in enumerate(value):
        out.append(check_value(f"{dotted}[{i}]", item, float, spec))
    return tuple(out)
