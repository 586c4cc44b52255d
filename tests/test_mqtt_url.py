"""Broker URLs: parsing, default ports, IPv6, and passwords that never show."""

from __future__ import annotations

import pytest

from edge_classifier.config import BrokerUrl, parse_broker_url, redact
from edge_classifier.errors import BrokerUrlError, EdgeClassifierError


@pytest.mark.parametrize("url, expected", [
    ("mqtt://host", BrokerUrl("host", 1883, False)),
    ("mqtts://host", BrokerUrl("host", 8883, True)),
    ("mqtt://broker.lan:1884", BrokerUrl("broker.lan", 1884, False)),
    ("MQTTS://Broker.LAN:8884/", BrokerUrl("broker.lan", 8884, True)),
    ("mqtt://user:pass@host:1883", BrokerUrl("host", 1883, False, "user", "pass")),
    ("mqtt://user@host", BrokerUrl("host", 1883, False, "user", "")),
    ("mqtt://us%40er:p%3Ass%2Fw@host", BrokerUrl("host", 1883, False, "us@er", "p:ss/w")),
    ("mqtt://user:p@ss@host", BrokerUrl("host", 1883, False, "user", "p@ss")),
    ("mqtt://[::1]", BrokerUrl("::1", 1883, False)),
    ("mqtts://u:pw@[fd00::2]:9883", BrokerUrl("fd00::2", 9883, True, "u", "pw")),
    ("  mqtt://127.0.0.1:1883  ", BrokerUrl("127.0.0.1", 1883, False)),
])
def test_parse_broker_url(url, expected):
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize("url, fragment", [
    ("", "empty"),
    ("host:1883", "must start with mqtt://"),
    ("http://u:hunter2@host", "must start with mqtt://"),
    ("tcp://host", "must start with mqtt://"),
    ("mqtt://", "no valid host"),
    ("mqtt://u:hunter2@:1883", "no valid host"),
    ("mqtt://host:99999", "not valid"),
    ("mqtt://u:hunter2@host:port", "not valid"),
    ("mqtt://host:0", "between 1 and 65535"),
    ("mqtt://host/topic", "must not have a path"),
    ("mqtt://u:hunter2@host?x=1", "must not have a path"),
    ("mqtt://[::1", "not valid"),
])
def test_bad_urls_are_rejected_without_showing_the_password(url, fragment):
    with pytest.raises(BrokerUrlError) as info:
        parse_broker_url(url)
    assert fragment in str(info.value)
    assert "hunter2" not in str(info.value)


def test_broker_url_error_is_a_value_error_and_a_project_error():
    assert issubclass(BrokerUrlError, ValueError) and issubclass(BrokerUrlError,
                                                                 EdgeClassifierError)


def test_str_and_repr_never_show_the_password():
    url = parse_broker_url("mqtts://bob:hunter2@[fd00::2]:9883")
    assert str(url) == "mqtts://bob@[fd00::2]:9883"
    assert "hunter2" not in repr(url) and "hunter2" not in str(url)


@pytest.mark.parametrize("text, expected", [
    ("mqtt://bob:hunter2@host:1883", "mqtt://bob:***@host:1883"),
    ("mqtt://bob:hun@ter2@host", "mqtt://bob:***@host"),
    ("cannot reach mqtts://bob:hunter2@host", "cannot reach mqtts://bob:***@host"),
    ("mqtt://bob@host", "mqtt://bob@host"),
    ("mqtt://host:1883", "mqtt://host:1883"),
    ("no url here", "no url here"),
])
def test_redact(text, expected):
    assert redact(text) == expected
