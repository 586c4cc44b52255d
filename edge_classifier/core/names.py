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
# Default-ignorable code points (Unicode's DerivedCoreProperties), which render as nothing:
# they never tell two names apart. Some are letters (U+3164 HANGUL FILLER), so they also never
# count as visible, nor does U+2800 (the blank Braille pattern).
_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
              (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
              (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
              (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
              (0xE0000, 0xE0FFF))
_BLANK = {0x2800}


def _ignorable(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _IGNORABLE)


def _visible(ch: str) -> bool:
    return unicodedata.category(ch)[0] in _VISIBLE and not _ignorable(ch) \
        and ord(ch) not in _BLANK


def class_key(name: str) -> str:
    """What two class names are compared by: NFKC, case-folded, without the characters that
    draw nothing (``ＡＰＰＬＥ`` == ``apple`` == ``a\u034fpple``)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return "".join(ch for ch in folded if not _ignorable(ch))


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
    if not any(_visible(ch) for ch in name):
        raise ClassNameError(f"class name {shown} has no visible character")
    if class_key(name) == UNKNOWN:
        raise ClassNameError(f"'{UNKNOWN}' is reserved for frames that match no class")
    return name
