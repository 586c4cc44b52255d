"""Class names: what a user may call a class, checked once for every way in (buttons, MQTT,
folder and CSV imports, the CLI, the web page).

A name is 1 to 64 characters of printable text, stored in Unicode NFC form: no ``/`` or ``\\``,
no control or invisible characters, at least one visible letter, digit, symbol or punctuation
mark, not ``.`` or ``..``, not starting with ``.``, no surrounding spaces, and not ``unknown``
in any spelling (the label reported when nothing matches). Two names that differ only in case
or Unicode form (``Apple``/``apple``, ``Café`` in NFC/NFD) are the same class
(:func:`class_key`)::

    validate_class_name("red apple")   # -> "red apple"
    validate_class_name("../etc")      # ClassNameError
    class_key("Apple") == class_key("apple")
"""

from __future__ import annotations

import unicodedata

from edge_classifier.errors import ClassNameError

MAX_LENGTH = 64
UNKNOWN = "unknown"
_INVALID = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
_VISIBLE = ("L", "N", "S", "P")  # first letter of the categories that draw something


def class_key(name: str) -> str:
    """What two class names are compared by: NFKC, case-folded (``ＡＰＰＬＥ`` == ``apple``)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def validate_class_name(name: object) -> str:
    """The NFC form of ``name`` if it is a valid class name, else :class:`ClassNameError`."""
    if not isinstance(name, str):
        raise ClassNameError(f"class name must be text, not {type(name).__name__}")
    shown = repr(name[:80])
    if not name:
        raise ClassNameError("class name is empty")
    name = unicodedata.normalize("NFC", name)
    if len(name) > MAX_LENGTH:
        raise ClassNameError(f"class name {shown} is longer than {MAX_LENGTH} characters")
    if name != name.strip():
        raise ClassNameError(f"class name {shown} starts or ends with white space")
    if "/" in name or "\\" in name:
        raise ClassNameError(f"class name {shown} contains a path separator")
    if name.startswith("."):
        raise ClassNameError(f"class name {shown} starts with '.'")
    for ch in name:
        if unicodedata.category(ch) in _INVALID:
            raise ClassNameError(f"class name {shown} contains a control or invisible character")
    if not any(unicodedata.category(ch)[0] in _VISIBLE for ch in name):
        raise ClassNameError(f"class name {shown} has no visible character")
    if class_key(name) == UNKNOWN:
        raise ClassNameError(f"'{UNKNOWN}' is reserved for frames that match no class")
    return name
