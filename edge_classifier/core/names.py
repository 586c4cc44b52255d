"""Class names: what a user may call a class, checked once for every way in (buttons, MQTT,
folder and CSV imports, the CLI).

A name is 1 to 64 characters of printable text: no ``/`` or ``\\``, no control characters, not
``.`` or ``..``, not starting with ``.``, no surrounding spaces, and not ``unknown`` (the label
reported when nothing matches)::

    validate_class_name("red apple")   # -> "red apple"
    validate_class_name("../etc")      # ClassNameError
"""

from __future__ import annotations

import unicodedata

from edge_classifier.errors import ClassNameError

MAX_LENGTH = 64
UNKNOWN = "unknown"


def validate_class_name(name: object) -> str:
    """Return ``name`` if it is a valid class name, else raise :class:`ClassNameError`."""
    if not isinstance(name, str):
        raise ClassNameError(f"class name must be text, not {type(name).__name__}")
    shown = repr(name[:80])
    if not name:
        raise ClassNameError("class name is empty")
    if len(name) > MAX_LENGTH:
        raise ClassNameError(f"class name {shown} is longer than {MAX_LENGTH} characters")
    if name != name.strip():
        raise ClassNameError(f"class name {shown} starts or ends with white space")
    if "/" in name or "\\" in name:
        raise ClassNameError(f"class name {shown} contains a path separator")
    if name.startswith("."):
        raise ClassNameError(f"class name {shown} starts with '.'")
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise ClassNameError(f"class name {shown} contains a control or invalid character")
    if name.casefold() == UNKNOWN:
        raise ClassNameError(f"'{UNKNOWN}' is reserved for frames that match no class")
    return name
