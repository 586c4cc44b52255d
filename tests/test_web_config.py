"""The [web] table: the studio's address, password and certificate are checked at load, so a
studio open to the network without a password never starts."""

from __future__ import annotations

import subprocess

import pytest

from edge_classifier.config import (Config, SourceConfig, WebConfig, is_loopback, parse_config,
                                    parse_listen, validate_config)
from edge_classifier.errors import ConfigError


@pytest.mark.parametrize("text, expected", [
    ("8080", ("127.0.0.1", 8080)),
    ("0.0.0.0:8080", ("0.0.0.0", 8080)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:80", ("::", 80)),
    ("localhost:0", ("localhost", 0)),
    ("pi.local:8080", ("pi.local", 8080)),
])
def test_listen_addresses(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text, problem", [
    (":8080", "give a host"),
    ("::1:8080", "in brackets"),
    ("[1.2.3.4]:80", "not an IPv6 address"),
    ("70000", "from 0 to 65535"),
    ("web", "from 0 to 65535"),
    ("a b:80", "not an IP address or host name"),
    ("host/x:80", "not an IP address or host name"),
])
def test_bad_listen_addresses_say_why(text, problem):
    with pytest.raises(ConfigError, match=problem) as caught:
        parse_config(f"[web]\nlisten = '{text}'\n")
    assert "web.listen" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("pi.local", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_the_default_is_no_studio_and_a_port_alone_is_this_machine_only():
    assert Config().web.listen == ""
    config = parse_config("[web]\nlisten = '8080'\n")
    assert parse_listen(config.web.listen)[0] == "127.0.0.1"


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "192.168.1.20:80",
                                    "pi.local:8080"])
def test_listening_beyond_this_machine_without_a_password_is_refused(listen):
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[web]\nlisten = '{listen}'\n", "c.toml")
    message = str(caught.value)
    assert message.startswith("c.toml: web.listen:") and "web.password" in message
    assert "\n" not in message


def test_a_password_or_auth_none_opens_the_network():
    assert parse_config("[web]\nlisten = '0.0.0.0:8080'\npassword = 's3cret'\n").web.password
    assert parse_config("[web]\nlisten = '0.0.0.0:8080'\nauth = 'none'\n").web.auth == "none"


def test_auth_none_with_a_password_is_a_contradiction():
    with pytest.raises(ConfigError, match="web.auth"):
        parse_config("[web]\nlisten = '8080'\nauth = 'none'\npassword = 'x'\n")


def test_the_password_file_is_read_at_load(tmp_path):
    secret = tmp_path / "web-password"
    secret.write_text("hunter2\n")
    config = parse_config(f"[web]\nlisten = '0.0.0.0:1'\npassword_file = '{secret}'\n")
    from edge_classifier.config import read_web_password
    assert read_web_password(config.web) == "hunter2"
    with pytest.raises(ConfigError, match="web.password_file: cannot read") as caught:
        parse_config(f"[web]\nlisten = '1'\npassword_file = '{tmp_path / 'missing'}'\n")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="not both"):
        parse_config(f"[web]\npassword = 'a'\npassword_file = '{secret}'\n")


def test_the_browser_source_needs_the_studio():
    with pytest.raises(ConfigError, match="source.kind: \"browser\" needs the web studio"):
        validate_config(Config(source=SourceConfig(kind="browser")))
    assert validate_config(Config(source=SourceConfig(kind="browser"),
                                  web=WebConfig(listen="0"))).source.kind == "browser"


def test_bad_hosts_are_named():
    with pytest.raises(ConfigError, match="web.hosts: 'pi local' is not a host name"):
        parse_config("[web]\nhosts = 'pi.lan, pi local'\n")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_the_certificate_and_key_load_at_load(certificate, tmp_path):
    cert, key = certificate
    config = parse_config(f"[web]\nlisten = '8443'\ncert = '{cert}'\nkey = '{key}'\n")
    assert config.web.cert == str(cert)
    with pytest.raises(ConfigError, match="web.cert: cannot load"):
        parse_config(f"[web]\nlisten = '8443'\ncert = '{key}'\n")  # a key is no certificate
    with pytest.raises(ConfigError, match="web.key: needs web.cert"):
        parse_config(f"[web]\nkey = '{key}'\n")
    with pytest.raises(ConfigError, match="web.cert: cannot load"):
        parse_config(f"[web]\nlisten = '8443'\ncert = '{tmp_path / 'none.pem'}'\n")
