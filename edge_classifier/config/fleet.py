"""The ``[fleet]`` table's rules and its key, checked at load like every other table::

    check_fleet(config)              # ConfigError naming the key (never the secret)
    secret = read_fleet_key(config.fleet)   # bytes, b"" when the fleet is off

A group name becomes an MQTT topic level, so it is as strict as ``device_id``; the key signs
every fleet message (HMAC-SHA256), so it must be long enough to resist guessing.
"""

from __future__ import annotations

import re

from edge_classifier.config.secrets import read_secret_file
from edge_classifier.errors import ConfigError

MIN_KEY = 16  # bytes
MAX_KEY = 1024
MAX_GROUP = 64
_GROUP = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_GROUP)


def read_fleet_key(f) -> bytes:
    """The group's secret: ``fleet.key`` or the content of ``fleet.key_file`` (without trailing
    line breaks); ConfigError naming the key, never showing the secret."""
    if not f.key_file:
        return f.key.encode("utf-8")
    return read_secret_file("fleet.key_file", f.key_file, MAX_KEY)


def check_fleet(config) -> None:
    """The rules of ``[fleet]``: nothing is checked while ``fleet.group`` is empty except that
    key and key_file are not both given."""
    f = config.fleet
    if f.key and f.key_file:
        raise ConfigError("fleet.key_file: give fleet.key or fleet.key_file, not both")
    if not f.group:
        return
    if not _GROUP.fullmatch(f.group):
        raise ConfigError(f"fleet.group: use 1 to {MAX_GROUP} ASCII letters, digits, '_' and "
                          f"'-', not {f.group[:MAX_GROUP + 1]!r}")
    if not config.mqtt.broker:
        raise ConfigError("fleet.group: the fleet talks through the MQTT broker: set "
                          "mqtt.broker")
    if not f.key and not f.key_file:
        raise ConfigError("fleet.key: a fleet needs the group's shared secret (fleet.key or "
                          "better fleet.key_file), the same on every device of the group")
    where = "fleet.key_file" if f.key_file else "fleet.key"
    secret = read_fleet_key(f)
    if len(secret) < MIN_KEY:
        raise ConfigError(f"{where}: the secret is shorter than {MIN_KEY} bytes (use e.g. "
                          "'openssl rand -hex 32')")
    if len(secret) > MAX_KEY:
        raise ConfigError(f"{where}: the secret is longer than {MAX_KEY} bytes")
