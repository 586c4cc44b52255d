"""aiohttp, imported on first use, so the package and the device loop import without it.

The studio's modules name aiohttp's parts only when they run (``web.Response(...)`` in a
handler, ``@web.middleware`` inside ``make_app``), so a device whose ``[web] listen`` is empty
never loads aiohttp (about 14 MiB of resident memory on a Pi)::

    from edge_classifier.comms.web.aio import web
    web.json_response({"ok": True})     # the first attribute read imports aiohttp.web
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A module imported at the first attribute read; each attribute is then kept here."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and friends probe these: not the module's
            raise AttributeError(attr)
        value = getattr(importlib.import_module(self._name), attr)
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name}>"


web = LazyModule("aiohttp.web")
http_exceptions = LazyModule("aiohttp.http_exceptions")
