"""Secrets kept in files (``web.password_file``, ``fleet.key_file``), read safely::

    data = read_secret_file("fleet.key_file", path, limit=1024)   # bytes, line breaks stripped

A FIFO or device is refused before it is opened (reading one would block); errors name the key
and the path, never the content.
"""

from __future__ import annotations

import os
import stat

from edge_classifier.errors import ConfigError


def secret_error(key: str, path: str, reason: str) -> ConfigError:
    return ConfigError(f"{key}: cannot read {path} ({reason})")


def read_secret_file(key: str, path: str, limit: int) -> bytes:
    """At most ``limit`` + 3 bytes of the regular file ``path`` (trailing line breaks
    stripped); :class:`ConfigError` naming ``key`` if it cannot be read."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)  # before open(): a FIFO would block
        if regular:
            with open(path, "rb") as fh:
                data = fh.read(limit + 3)
    except OSError as exc:
        raise secret_error(key, path, exc.strerror or type(exc).__name__) from None
    except ValueError:
        raise secret_error(key, path, "not a valid path") from None
    if not regular:
        raise secret_error(key, path, "not a regular file")
    return data.rstrip(b"\r\n")
