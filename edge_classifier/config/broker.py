"""Broker URLs and MQTT credentials, as the config gives them::

    url = parse_broker_url("mqtts://bob:hunter2@broker.lan")   # BrokerUrl(host='broker.lan', ...)
    str(url)                                                    # 'mqtts://bob@broker.lan:8883'
    redact("cannot reach mqtt://bob:hunter2@host")              # '... mqtt://bob:***@host'
    read_password_file("/etc/edge-classifier/mqtt-password")    # the file's first line

The config loader checks all of them once, at load; the MQTT client then relies on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from edge_classifier.config.secrets import read_secret_file, secret_error
from edge_classifier.errors import BrokerUrlError, ConfigError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
MQTT_STRING_BYTES = 65535  # MQTT's limit for a user name or password (a 2-byte length)


@dataclass(frozen=True)
class BrokerUrl:
    """A parsed broker URL; ``str()`` and ``repr()`` never show the password."""

    host: str
    port: int
    tls: bool
    username: str = ""
    password: str = field(default="", repr=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


def redact(text: str) -> str:
    """``text`` with a URL's password replaced: ``mqtt://bob:***@host:1883``."""
    head, sep, rest = str(text).partition("://")
    at = rest.rfind("@")
    if not sep or at < 0 or ":" not in rest[:at]:
        return str(text)
    user = rest[:at].split(":", 1)[0]
    return f"{head}://{user}:***@{rest[at + 1:]}"


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://`` (TLS), IPv6 hosts in brackets,
    default ports 1883 and 8883; user and password may be %-encoded."""
    if not isinstance(url, str) or not url.strip():
        raise BrokerUrlError("broker URL is empty; use mqtt://host[:port] or mqtts://host[:port]")
    shown = redact(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BrokerUrlError(f"broker URL {shown!r} is not valid ({redact(str(exc))})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BrokerUrlError(f"broker URL {shown!r} must start with mqtt:// or mqtts://")
    host = parts.hostname or ""
    if not host or any(ch.isspace() or ch in "/\\" for ch in host):
        raise BrokerUrlError(f"broker URL {shown!r} has no valid host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerUrlError(f"broker URL {shown!r} must not have a path, query or fragment")
    if port == 0:
        raise BrokerUrlError(f"broker URL {shown!r}: port must be between 1 and 65535")
    return BrokerUrl(host=host, port=port or DEFAULT_PORTS[scheme], tls=scheme == "mqtts",
                     username=unquote(parts.username or ""),
                     password=unquote(parts.password or ""))


def read_password_file(path: str) -> str:
    """The password in ``path``, a regular UTF-8 file, without trailing line breaks.
    Raises :class:`ConfigError` naming ``mqtt.password_file`` (never the password)."""
    data = read_secret_file("mqtt.password_file", path, MQTT_STRING_BYTES)

    def fail(reason: str) -> ConfigError:
        return secret_error("mqtt.password_file", path, reason)
    if len(data) > MQTT_STRING_BYTES:
        raise fail(f"longer than MQTT's {MQTT_STRING_BYTES} bytes")
    if not data:
        raise fail("it is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("not UTF-8 text") from None
