"""The rules a config must pass before anything starts, each error naming its key::

    config = validate_config(Config(device_id="küche"))
    # ConfigError: device_id: use ASCII letters, digits, '_' and '-' only ...

:func:`validate_config` checks every key's type, range and choices again (configs made in code
or changed by command-line options get the same checks as files) and then the rules between
keys: known head and model names, GPIO pins used once, MQTT topics, credentials and TLS files,
the web studio's address, password and certificate.
Everything ``run`` would otherwise only find out later is found here, so the MQTT client, the
head and the backbone rely on a valid config.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import ssl
import unicodedata
from importlib.metadata import entry_points
from typing import Any, Dict, List, Tuple, get_type_hints

from edge_classifier.backbone.manifest import load_manifest
from edge_classifier.config.broker import (MQTT_STRING_BYTES, BrokerUrl, parse_broker_url,
                                           read_password_file)
from edge_classifier.config.fleet import check_fleet
from edge_classifier.config.keys import check_value, item_type, shown, spec_of
from edge_classifier.config.schema import MAX_DEVICE_ID, Config
from edge_classifier.config.secrets import read_secret_file, secret_error
from edge_classifier.core.names import validate_class_name
from edge_classifier.frames.region import check_crop
from edge_classifier.errors import ConfigError

MAX_TOPIC_PREFIX = 256  # characters of mqtt.base_topic and mqtt.discovery_prefix
MAX_CLIENT_ID = 128
MIN_LORES_SIDE = 16  # pixels of source.width and source.height when they are set
_DEVICE_ID = re.compile(f"[A-Za-z0-9_-]{{1,{MAX_DEVICE_ID}}}")  # Home Assistant's object_id


def validate_config(config: Config) -> Config:
    """``config`` if it passes every rule, else :class:`ConfigError` naming the first bad key."""
    _check_values(config, "")
    _check_device_id(config.device_id)
    _check_classes(config)
    _check_gpio(config)
    _check_model(config.model.name)
    _check_source(config.source)
    if config.source.kind == "replay" and not config.source.path:
        raise ConfigError("source.path: source.kind = \"replay\" needs a folder or image files")
    if config.source.kind == "browser" and not config.web.listen:
        raise ConfigError("source.kind: \"browser\" needs the web studio: set web.listen (or "
                          "run --web PORT)")
    _check_mqtt(config.mqtt)
    _check_web(config.web)
    check_fleet(config)
    return config


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> Dict[str, Any]:
    return get_type_hints(cls)


def _check_values(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        value, kind = getattr(obj, f.name), _hints(type(obj))[f.name]
        if dataclasses.is_dataclass(kind):
            _check_values(value, dotted)
        elif item_type(kind) is not None:
            for i, item in enumerate(value):
                _check_values(item, f"{dotted}[{i}]")
        else:
            check_value(dotted, value, kind, spec_of(f))


def _check_source(source) -> None:
    for side in ("width", "height"):
        value = getattr(source, side)
        if 0 < value < MIN_LORES_SIDE:
            raise ConfigError(f"source.{side}: 0 (the model's input size) or at least "
                              f"{MIN_LORES_SIDE}, not {value}")
    if (source.width == 0) != (source.height == 0):
        raise ConfigError("source.width, source.height: set both, or leave both 0 (the "
                          "model's input size)")
    try:
        check_crop(source.crop)
    except ValueError as exc:
        raise ConfigError(f"source.crop: {exc}") from None


def _check_device_id(device_id: str) -> None:
    if not device_id:
        raise ConfigError("device_id: must not be empty")
    if len(device_id) > MAX_DEVICE_ID:
        raise ConfigError(f"device_id: at most {MAX_DEVICE_ID} characters, not "
                          f"{len(device_id)}")
    if not _DEVICE_ID.fullmatch(device_id):
        raise ConfigError(f"device_id: use ASCII letters, digits, '_' and '-' only (Home "
                          f"Assistant's discovery topics allow no others), not "
                          f"{shown(device_id)}")


def _check_classes(config: Config) -> None:
    seen = set()
    for i, c in enumerate(config.classes):
        try:
            validate_class_name(c.name)
        except ValueError as exc:
            raise ConfigError(f"classes[{i}].name: {exc}") from None
        if c.name in seen:
            raise ConfigError(f"classes[{i}].name: {c.name!r} is listed twice")
        seen.add(c.name)
    if len(config.classes) > config.head.max_classes:
        raise ConfigError(f"head.max_classes: {len(config.classes)} classes are listed in "
                          f"[[classes]], more than {config.head.max_classes}")


def _check_gpio(config: Config) -> None:
    pins: Dict[int, str] = {}
    wired = [(f"classes[{i}].{what}", getattr(c, what))
             for i, c in enumerate(config.classes) for what in ("button", "led")]
    wired += [(f"gpio.{what}", getattr(config.gpio, what))
              for what in ("delete_button", "status_led")]
    for dotted, pin in wired:
        if pin is None:
            continue
        if pin in pins:
            raise ConfigError(f"{dotted}: GPIO {pin} is already used by {pins[pin]}")
        pins[pin] = dotted
    g = config.gpio
    if g.very_long_press <= g.long_press:
        raise ConfigError("gpio.very_long_press: must be longer than gpio.long_press")
    known = _pin_factories()
    name = g.pin_factory
    if name and known and name not in known and name.lower() not in known:
        raise ConfigError(f"gpio.pin_factory: no gpiozero pin factory called {shown(name)}; "
                          f"known: {', '.join(sorted(known))}")


def _pin_factories() -> set:
    """Names of the installed gpiozero pin factories, and "mock" (empty: no gpiozero)."""
    names = {ep.name for ep in entry_points(group="gpiozero_pin_factories")}
    return names | {"mock"} if names else names


def _check_model(name: str) -> None:
    if not name:
        return
    try:
        models = [entry.name for entry in load_manifest().models]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name: cannot read the model manifest ({exc})") from None
    if name not in models:
        raise ConfigError(f"model.name: unknown model {shown(name)}; choose one of "
                          f"{', '.join(models)} (or leave it empty for the default)")


# --- MQTT -------------------------------------------------------------------------------------
def _check_mqtt(m) -> None:
    if m.reconnect_max < m.reconnect_min:
        raise ConfigError("mqtt.reconnect_max: must not be below mqtt.reconnect_min")
    if m.base_topic:
        _check_topic_prefix("mqtt.base_topic", m.base_topic)
    if not m.discovery_prefix:
        raise ConfigError("mqtt.discovery_prefix: must not be empty (Home Assistant's is "
                          "\"homeassistant\")")
    _check_topic_prefix("mqtt.discovery_prefix", m.discovery_prefix)
    if m.client_id and (len(m.client_id) > MAX_CLIENT_ID
                        or not all(" " <= ch <= "~" for ch in m.client_id)):
        raise ConfigError(f"mqtt.client_id: use up to {MAX_CLIENT_ID} printable ASCII "
                          f"characters, not {shown(m.client_id)}")
    if m.password and m.password_file:
        raise ConfigError("mqtt.password_file: give mqtt.password or mqtt.password_file, not "
                          "both")
    password = read_password_file(m.password_file) if m.password_file else m.password
    if not m.broker:
        return  # nothing else is used without a broker
    try:
        url = parse_broker_url(m.broker)
    except ValueError as exc:
        raise ConfigError(f"mqtt.broker: {exc}") from None
    _check_credentials(m, url, password)
    _check_tls(m, url)


def _check_topic_prefix(dotted: str, topic: str) -> None:
    if len(topic) > MAX_TOPIC_PREFIX:
        problem = f"at most {MAX_TOPIC_PREFIX} characters, not {len(topic)}"
    elif "+" in topic or "#" in topic:
        problem = "must not contain the MQTT wildcards '+' and '#'"
    elif any(unicodedata.category(ch) == "Cc" for ch in topic):
        problem = "must not contain control characters"
    elif topic.startswith("$"):
        problem = "must not start with '$' (the broker keeps those topics, e.g. $SYS, for itself)"
    elif topic.startswith("/") or topic.endswith("/"):
        problem = "must not start or end with '/'"
    elif "//" in topic:
        problem = "must not have an empty level ('a//b')"
    else:
        return
    raise ConfigError(f"{dotted}: {problem}, not {shown(topic)}")


def _check_credentials(m, url: BrokerUrl, password: str) -> None:
    if m.username and url.username and m.username != url.username:
        raise ConfigError("mqtt.username: differs from the user name in mqtt.broker; give it "
                          "in one place")
    where = "mqtt.password_file" if m.password_file else "mqtt.password"
    if password and url.password:
        raise ConfigError(f"{where}: mqtt.broker holds a password too; give it in one place")
    if url.password:
        password, where = url.password, "mqtt.broker"
    username = m.username or url.username
    if password and not username:
        raise ConfigError(f"{where}: a password needs a user name (mqtt.username or the "
                          f"broker URL)")
    for dotted, text in (("mqtt.username", username), (where, password)):
        if len(text.encode("utf-8")) > MQTT_STRING_BYTES:
            raise ConfigError(f"{dotted}: longer than MQTT's {MQTT_STRING_BYTES} bytes")
        if "\0" in text:
            raise ConfigError(f"{dotted}: must not contain a NUL character")


class _EncryptedKey(Exception):
    """Raised by the key-password callback: the key file is encrypted."""


def _no_key_password() -> bytes:
    raise _EncryptedKey  # without a callback OpenSSL would prompt on the terminal


def _check_tls(m, url: BrokerUrl) -> None:
    """The TLS options go with mqtts:// and their files load as paho's ``tls_set`` loads them."""
    options = [name for name in ("tls_ca", "tls_cert", "tls_key", "tls_insecure")
               if getattr(m, name)]
    if not url.tls:
        if options:
            raise ConfigError(f"mqtt.{options[0]}: TLS options are set but mqtt.broker is not "
                              f"an mqtts:// URL")
        return
    if m.tls_key and not m.tls_cert:
        raise ConfigError("mqtt.tls_key: needs mqtt.tls_cert, the certificate it belongs to")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if m.tls_ca:
        _load_tls("mqtt.tls_ca", f"the CA certificate from {m.tls_ca}",
                  context.load_verify_locations, m.tls_ca)
    if m.tls_cert:
        files = m.tls_cert + (f" and {m.tls_key}" if m.tls_key else "")
        _load_tls("mqtt.tls_cert", f"the client certificate and key from {files}",
                  context.load_cert_chain, m.tls_cert, m.tls_key or None, _no_key_password)


def _load_tls(dotted: str, what: str, load, *args, key_dotted: str = "mqtt.tls_key") -> None:
    try:
        load(*args)
    except _EncryptedKey:
        raise ConfigError(f"{key_dotted}: the key is encrypted; give an unencrypted key (it "
                          "would ask for its passphrase on a terminal)") from None
    except ssl.SSLError as exc:  # e.g. KEY_VALUES_MISMATCH; PEM_LIB: no PEM data found
        reason = ("not PEM data, or no key" if exc.reason in (None, "PEM_LIB")
                  else exc.reason.replace("_", " ").lower())
        raise ConfigError(f"{dotted}: cannot load {what} ({reason})") from None
    except OSError as exc:
        raise ConfigError(f"{dotted}: cannot load {what} ({exc.strerror or exc})") from None


# --- the web studio ---------------------------------------------------------------------------
DEFAULT_WEB_HOST = "127.0.0.1"
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
MAX_WEB_PASSWORD = 1024  # bytes


def parse_listen(text: str) -> Tuple[str, int]:
    """``[HOST:]PORT`` as (host, port), or ValueError saying what is wrong::

        parse_listen("8080")            # -> ("127.0.0.1", 8080)
        parse_listen("0.0.0.0:8080")    # -> ("0.0.0.0", 8080)
        parse_listen("[::1]:8080")      # -> ("::1", 8080)

    Port 0 asks the system for a free port. HOST is an IP address or a host name.
    """
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_WEB_HOST, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:8080")
    elif not host:
        raise ValueError("give a host before ':' (0.0.0.0 for every address), or only a port")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, not {port_text[:20]!r}")
    if not _is_ip(host) and not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{host[:60]!r} is not an IP address or host name")
    return host, int(port_text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and ``localhost``."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_hosts(text: str) -> List[str]:
    """The host names of ``web.hosts`` (comma-separated), lower-cased; ValueError if one is not
    a host name."""
    names = [h.strip().lower().rstrip(".") for h in text.split(",") if h.strip()]
    for name in names:
        if not _HOST_NAME.fullmatch(name):
            raise ValueError(f"{name[:60]!r} is not a host name")
    return names


def read_web_password(w) -> str:
    """The web studio's password: ``web.password`` or the text of ``web.password_file``
    (without trailing line breaks); ConfigError naming the key (never the password)."""
    if not w.password_file:
        return w.password
    path = w.password_file
    data = read_secret_file("web.password_file", path, MAX_WEB_PASSWORD)

    def fail(reason: str) -> ConfigError:
        return secret_error("web.password_file", path, reason)
    if not data:
        raise fail("it is empty")
    if len(data) > MAX_WEB_PASSWORD:
        raise fail(f"longer than {MAX_WEB_PASSWORD} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("not UTF-8 text") from None


def _check_web(w) -> None:
    if w.password and w.password_file:
        raise ConfigError("web.password_file: give web.password or web.password_file, not both")
    if len(w.password.encode("utf-8")) > MAX_WEB_PASSWORD:
        raise ConfigError(f"web.password: longer than {MAX_WEB_PASSWORD} bytes")
    try:
        web_hosts(w.hosts)
    except ValueError as exc:
        raise ConfigError(f"web.hosts: {exc}") from None
    if w.key and not w.cert:
        raise ConfigError("web.key: needs web.cert, the certificate it belongs to")
    if not w.listen:
        return  # nothing else is used without the web studio
    try:
        host, _ = parse_listen(w.listen)
    except ValueError as exc:
        raise ConfigError(f"web.listen: {exc} ({shown(w.listen)})") from None
    password = read_web_password(w)
    if w.auth == "none" and password:
        where = "web.password_file" if w.password_file else "web.password"
        raise ConfigError(f"web.auth: \"none\" but {where} is set; remove one of them")
    if not password and w.auth != "none" and not is_loopback(host):
        raise ConfigError(f"web.listen: {shown(w.listen)} can be reached from other machines: "
                          "set web.password or web.password_file (or web.auth = \"none\" to "
                          "let anyone on the network teach the device)")
    if w.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        files = w.cert + (f" and {w.key}" if w.key else "")
        _load_tls("web.cert", f"the certificate and key from {files}", context.load_cert_chain,
                  w.cert, w.key or None, _no_key_password, key_dotted="web.key")
