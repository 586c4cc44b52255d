"""Configuration: every rule is checked at load, by ``parse_config`` and ``config --check`` alike,
each error naming its key; the example is written from the keys' specs and parses back to the
defaults."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from edge_classifier import cli
from edge_classifier.backbone.manifest import load_manifest
from edge_classifier.config import (Config, HeadConfig, MqttConfig, example_text, load_config,
                                    parse_config, validate_config)
from edge_classifier.config.keys import spec_of, walk
from edge_classifier.errors import ConfigError
from edge_classifier.learning.heads import HEAD_NAMES

MODELS = [entry.name for entry in load_manifest().models]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """PEM files: a self-signed certificate and its key, a second key, the key encrypted,
    a garbage file and an empty password file beside a good one."""
    folder = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    for name in ("cert", "other"):
        subprocess.run(["openssl", "req", "-x509", *ec, "-subj", f"/CN={name}", "-keyout",
                        str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt")],
                       check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "pkey", "-in", str(folder / "cert.key"), "-aes256", "-passout",
                    "pass:secret", "-out", str(folder / "encrypted.key")],
                   check=True, capture_output=True, timeout=60)
    (folder / "garbage.pem").write_text("not a certificate\n")
    (folder / "password").write_text("s3cret\n")
    (folder / "empty").write_text("")
    return folder


def _cases(tls):
    """(toml text, the start of the error after the file name) for every rule."""
    mqtts = "[mqtt]\nbroker = 'mqtts://broker.lan'\n"
    return {
        # values and unknown keys
        "unknown top-level key": ("colour = 1", "unknown key colour"),
        "unknown key in a table": ("[smoothing]\nthreshhold = 0.5",
                                   "unknown key smoothing.threshhold"),
        "unknown mqtt key": ("[mqtt]\nport = 1883", "unknown key mqtt.port"),
        "whole number expected": ("[mqtt]\nkeepalive = 'long'",
                                  "mqtt.keepalive: expected a whole number"),
        "boolean expected": ("[mqtt]\ncommands = 'yes'", "mqtt.commands: expected true or false"),
        "a table expected": ("source = 3", "source: expected a table"),
        "not TOML": ("[mqtt\n", "not valid TOML"),
        "choice": ("[source]\nkind = 'webcam'", "source.kind: must be one of"),
        "range": ("[smoothing]\nthreshold = 1.5", "smoothing.threshold: must be between 0 and 1"),
        "NUL in text": ('state_dir = "a\\u0000b"', "state_dir: must not contain a NUL"),
        # names the device uses later
        "misspelled head": ("[head]\nname = 'knnn'", "head.name: must be one of auto, "
                                                     "least_squares"),
        "unknown model": ("[model]\nname = 'mobilenet_v3'", "model.name: unknown model "
                                                           "'mobilenet_v3'; choose one of"),
        "a file, not a model": ("[model]\nname = 'cat.bmp'", "model.name: unknown model"),
        "replay without a path": ("[source]\nkind = 'replay'", "source.path: source.kind = "
                                                               "\"replay\" needs"),
        "unknown pin factory": ("[gpio]\npin_factory = 'lgpoi'",
                                "gpio.pin_factory: no gpiozero pin factory called 'lgpoi'"),
        # device id
        "non-ASCII device id": ("device_id = 'küche'", "device_id: use ASCII letters"),
        "device id with a space": ("device_id = 'my pi'", "device_id: use ASCII letters"),
        "device id with a slash": ("device_id = 'a/b'", "device_id: use ASCII letters"),
        "empty device id": ("device_id = ''", "device_id: must not be empty"),
        "65-character device id": (f"device_id = '{'a' * 65}'",
                                   "device_id: at most 64 characters, not 65"),
        "70,000-character device id": (f"device_id = '{'a' * 70000}'",
                                       "device_id: at most 64 characters, not 70000"),
        # topics
        "$SYS base topic": ("[mqtt]\nbase_topic = '$SYS/broker'",
                            "mqtt.base_topic: must not start with '$'"),
        "'#' in the base topic": ("[mqtt]\nbase_topic = 'a/#'", "mqtt.base_topic: must not "
                                                                 "contain the MQTT wildcards"),
        "'+' in the base topic": ("[mqtt]\nbase_topic = 'a/+/b'", "mqtt.base_topic: must not "
                                                                   "contain the MQTT wildcards"),
        "leading '/'": ("[mqtt]\nbase_topic = '/home/pi'",
                        "mqtt.base_topic: must not start or end with '/'"),
        "trailing '/'": ("[mqtt]\nbase_topic = 'home/pi/'",
                         "mqtt.base_topic: must not start or end with '/'"),
        "empty topic level": ("[mqtt]\nbase_topic = 'home//pi'",
                              "mqtt.base_topic: must not have an empty level"),
        "NUL in the base topic": ('[mqtt]\nbase_topic = "a\\u0000b"',
                                  "mqtt.base_topic: must not contain a NUL"),
        "control character in the base topic": ('[mqtt]\nbase_topic = "a\\tb"',
                                                "mqtt.base_topic: must not contain control"),
        "long base topic": (f"[mqtt]\nbase_topic = '{'a' * 257}'",
                            "mqtt.base_topic: at most 256 characters"),
        "$ discovery prefix": ("[mqtt]\ndiscovery_prefix = '$ha'",
                               "mqtt.discovery_prefix: must not start with '$'"),
        "wildcard discovery prefix": ("[mqtt]\ndiscovery_prefix = 'ha/#'",
                                      "mqtt.discovery_prefix: must not contain the MQTT"),
        "empty discovery level": ("[mqtt]\ndiscovery_prefix = 'home//assistant'",
                                  "mqtt.discovery_prefix: must not have an empty level"),
        "empty discovery prefix": ("[mqtt]\ndiscovery_prefix = ''",
                                   "mqtt.discovery_prefix: must not be empty"),
        # client id
        "long client id": (f"[mqtt]\nclient_id = '{'c' * 129}'",
                           "mqtt.client_id: use up to 128 printable ASCII"),
        "non-ASCII client id": ("[mqtt]\nclient_id = 'küche'",
                                "mqtt.client_id: use up to 128 printable ASCII"),
        "control character in the client id": ('[mqtt]\nclient_id = "a\\nb"',
                                                "mqtt.client_id: use up to 128 printable"),
        # credentials
        "password and password file": (f"[mqtt]\npassword = 'x'\npassword_file = "
                                       f"'{tls / 'password'}'",
                                       "mqtt.password_file: give mqtt.password or "
                                       "mqtt.password_file, not both"),
        "missing password file": (f"[mqtt]\npassword_file = '{tls / 'nope'}'",
                                  "mqtt.password_file: cannot read"),
        "password file is a folder": (f"[mqtt]\npassword_file = '{tls}'",
                                      "mqtt.password_file: cannot read"),
        "empty password file": (f"[mqtt]\npassword_file = '{tls / 'empty'}'",
                                "mqtt.password_file: cannot read"),
        "password without a user": ("[mqtt]\nbroker = 'mqtt://h'\npassword = 'x'",
                                    "mqtt.password: a password needs a user name"),
        "password file without a user": (f"[mqtt]\nbroker = 'mqtt://h'\npassword_file = "
                                         f"'{tls / 'password'}'",
                                         "mqtt.password_file: a password needs a user name"),
        "password in the URL and the key": ("[mqtt]\nbroker = 'mqtt://u:p@h'\npassword = 'q'",
                                            "mqtt.password: mqtt.broker holds a password too"),
        "two user names": ("[mqtt]\nbroker = 'mqtt://ann@h'\nusername = 'bob'",
                           "mqtt.username: differs from the user name in mqtt.broker"),
        "user name too long": (f"[mqtt]\nbroker = 'mqtt://h'\nusername = '{'u' * 65536}'",
                               "mqtt.username: longer than MQTT's 65535 bytes"),
        "bad broker URL": ("[mqtt]\nbroker = 'http://host'", "mqtt.broker: broker URL"),
        # TLS
        "TLS file without mqtts": (f"[mqtt]\nbroker = 'mqtt://h'\ntls_ca = '{tls / 'cert.crt'}'",
                                   "mqtt.tls_ca: TLS options are set but mqtt.broker is not an "
                                   "mqtts:// URL"),
        "tls_insecure without mqtts": ("[mqtt]\nbroker = 'mqtt://h'\ntls_insecure = true",
                                       "mqtt.tls_insecure: TLS options are set"),
        "key without certificate": (f"{mqtts}tls_key = '{tls / 'cert.key'}'",
                                    "mqtt.tls_key: needs mqtt.tls_cert"),
        "missing CA file": (f"{mqtts}tls_ca = '{tls / 'missing.crt'}'",
                            "mqtt.tls_ca: cannot load the CA certificate"),
        "CA file is no certificate": (f"{mqtts}tls_ca = '{tls / 'garbage.pem'}'",
                                      "mqtt.tls_ca: cannot load the CA certificate"),
        "certificate with another key": (f"{mqtts}tls_cert = '{tls / 'cert.crt'}'\n"
                                         f"tls_key = '{tls / 'other.key'}'",
                                         "mqtt.tls_cert: cannot load the client certificate"),
        "encrypted key": (f"{mqtts}tls_cert = '{tls / 'cert.crt'}'\n"
                          f"tls_key = '{tls / 'encrypted.key'}'",
                          "mqtt.tls_key: the key is encrypted"),
        # between keys
        "reconnect back-off": ("[mqtt]\nreconnect_min = 5.0\nreconnect_max = 2.0",
                               "mqtt.reconnect_max: must not be below mqtt.reconnect_min"),
        "long presses": ("[gpio]\nlong_press = 3.0\nvery_long_press = 2.0",
                         "gpio.very_long_press: must be longer than gpio.long_press"),
        "class without a name": ("[[classes]]\nbutton = 3", "classes[0].name: required"),
        "path-like class name": ("[[classes]]\nname = '../x'",
                                 "classes[0].name: class name '../x' contains a path"),
        "pin out of range": ("[[classes]]\nname = 'a'\nbutton = 99",
                             "classes[0].button: GPIO pin must be between 0 and 63"),
        "class listed twice": ("[[classes]]\nname = 'a'\n[[classes]]\nname = 'a'",
                               "classes[1].name: 'a' is listed twice"),
        "pin used twice": ("[[classes]]\nname = 'a'\nbutton = 4\n[[classes]]\nname = 'b'\n"
                           "led = 4", "classes[1].led: GPIO 4 is already used by "
                                      "classes[0].button"),
        "delete button on the status LED's pin": ("[gpio]\ndelete_button = 5\nstatus_led = 5",
                                                  "gpio.status_led: GPIO 5 is already used by "
                                                  "gpio.delete_button"),
        "more classes than head.max_classes": (
            "[head]\nmax_classes = 2\n" + "".join(f"[[classes]]\nname = 'c{i}'\n"
                                                  for i in range(3)),
            "head.max_classes: 3 classes are listed in [[classes]], more than 2"),
        "head.max_classes out of range": ("[head]\nmax_classes = 0",
                                          "head.max_classes: must be between 1 and 1000"),
    }


CASES = list(_cases(Path("/nonexistent")))  # the case names, for the test ids


@pytest.fixture
def case(request, tls):
    return _cases(tls)[request.param]


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_parse_config_names_the_key(case):
    text, expected = case
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.toml")
    message = str(info.value)
    assert message.startswith(f"c.toml: {expected}"), message
    assert "\n" not in message and len(message) < 400  # one short line, even for huge values


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_config_check_names_the_key(case, tmp_path, capsys):
    text, expected = case
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    assert cli.main(["config", "--check", str(path)]) != 0
    captured = capsys.readouterr()
    assert f"{path}: {expected}" in captured.err and "Traceback" not in captured.err
    assert "OK" not in captured.out


def test_the_unknown_model_error_lists_the_choices():
    with pytest.raises(ConfigError) as info:
        parse_config("[model]\nname = 'mobilenet_v3'")
    assert all(name in str(info.value) for name in MODELS)


@pytest.mark.parametrize("name", list(HEAD_NAMES) + ["multilabel"])
def test_every_known_head_is_accepted(name):
    assert parse_config(f"[head]\nname = '{name}'").head.name == name


@pytest.mark.parametrize("name", MODELS + [""])
def test_every_manifest_model_is_accepted(name):
    assert parse_config(f"[model]\nname = '{name}'").model.name == name


@pytest.mark.parametrize("text", [
    "device_id = 'Pi-4_b'", f"device_id = '{'a' * 64}'", "[mqtt]\nbase_topic = 'home/pi 4/cam'",
    "[mqtt]\ndiscovery_prefix = 'ha'", f"[mqtt]\nclient_id = '{'c' * 128}'",
    "[mqtt]\nbroker = 'mqtt://ann@h'\nusername = 'ann'\npassword = 'x'",
    "[mqtt]\nbroker = 'mqtt://ann:x@h'", "[gpio]\npin_factory = 'MOCK'",
    "[source]\nkind = 'replay'\npath = 'photos/'",
    "[head]\nmax_classes = 2\n[[classes]]\nname = 'a'\n[[classes]]\nname = 'b'",
])
def test_valid_edge_values_are_accepted(text):
    assert isinstance(parse_config(text), Config)


def test_a_good_password_file_and_tls_files_pass(tls):
    config = parse_config(f"[mqtt]\nbroker = 'mqtts://ann@broker.lan'\npassword_file = "
                          f"'{tls / 'password'}'\ntls_ca = '{tls / 'cert.crt'}'\ntls_cert = "
                          f"'{tls / 'cert.crt'}'\ntls_key = '{tls / 'cert.key'}'\n")
    assert config.mqtt.tls_key.endswith("cert.key")


def _out_of_range():
    for dotted, f, kind in walk(Config):
        spec = spec_of(f)
        if spec.range:
            lo, hi = spec.range
            yield dotted, kind, lo - 1 if kind is int or "Optional" in str(kind) else lo - 0.5
            yield dotted, kind, hi + 1


@pytest.mark.parametrize("dotted, kind, value", list(_out_of_range()))
def test_every_range_is_enforced(dotted, kind, value):
    section, _, name = dotted.rpartition(".")
    if section == "classes":
        text = f"[[classes]]\nname = 'a'\n{name} = {value!r}"
        expected = f"classes[0].{name}: "
    else:
        text = f"[{section}]\n{name} = {value!r}" if section else f"{name} = {value!r}"
        expected = f"{dotted}: "
    with pytest.raises(ConfigError, match=re.escape(expected) + ".*must be between"):
        parse_config(text)


def test_every_key_has_help_and_every_number_a_range():
    for dotted, f, kind in walk(Config):
        spec = spec_of(f)
        assert spec.help, dotted
        if kind in (int, float) or "Optional" in str(kind):
            assert spec.range, f"{dotted} has no range"


def test_max_classes_defaults_to_50():
    assert Config().head.max_classes == 50 == parse_config("").head.max_classes


def test_validate_config_checks_configs_made_in_code():
    with pytest.raises(ConfigError, match="^device_id: use ASCII"):
        validate_config(Config(device_id="küche"))
    with pytest.raises(ConfigError, match="^head.name: must be one of"):
        validate_config(Config(device_id="x", head=HeadConfig(name="svm")))
    with pytest.raises(ConfigError, match="^mqtt.qos: must be between 0 and 2"):
        validate_config(Config(device_id="x", mqtt=MqttConfig(qos=3)))


def test_the_default_device_id_is_valid():
    assert validate_config(Config()).device_id


# --- the example -----------------------------------------------------------------------------
def _documented_keys(text):
    """{dotted key: (help text above it, value text)} from an example file; the commented
    ``[[classes]]`` example is read as if uncommented."""
    keys, section, block = {}, "", []
    for line in text.splitlines():
        if line.startswith("# [[") or section == "classes":
            line = line[2:] if line.startswith("# ") else line.lstrip("#")
        header = re.fullmatch(r"\[\[?(\w+)\]\]?", line)
        entry = re.fullmatch(r"(?:# )?(\w+) = (.+)", line)
        if header:
            section, block = header[1], []
        elif entry and entry[1] in {f.name for f in _fields(section)}:
            keys[f"{section}.{entry[1]}" if section else entry[1]] = (" ".join(block), entry[2])
            block = []
        elif line.startswith("# "):
            block.append(line[2:])
        else:
            block = []
    return keys


def _fields(section):
    if not section:
        return dataclasses.fields(Config)
    return [f for dotted, f, _ in walk(Config) if dotted.rpartition(".")[0] == section]


def test_the_example_parses_back_to_the_defaults():
    assert parse_config(example_text()) == Config()


def test_the_example_names_every_key_with_its_help():
    documented = _documented_keys(example_text())
    for dotted, f, _ in walk(Config):
        assert dotted in documented, f"{dotted} is missing from the example"
        assert spec_of(f).help in documented[dotted][0], dotted


def test_the_examples_in_the_example_are_valid():
    names = {dotted.rpartition(".")[2] for dotted, _, _ in walk(Config)}
    commented = re.compile(rf"# (({'|'.join(names)}) = |\[\[|# )")
    text = "\n".join(line[2:] if commented.match(line) else line
                     for line in example_text().splitlines())
    config = parse_config(text)
    assert config.device_id == "kitchen-cam" and config.gpio.delete_button == 22
    assert [(c.name, c.button, c.led) for c in config.classes] == [("apple", 17, 27)]


# --- files and the command line ----------------------------------------------------------------
def test_classes_and_pins():
    config = parse_config('[[classes]]\nname = "apple"\nbutton = 17\nled = 27\n'
                          '[[classes]]\nname = "pear"\n')
    assert [(c.name, c.button, c.led) for c in config.classes] == [("apple", 17, 27),
                                                                   ("pear", None, None)]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "nope.toml"))


def test_cli_example_and_check(tmp_path, capsys):
    assert cli.main(["config", "--example"]) == 0
    path = tmp_path / "c.toml"
    path.write_text(capsys.readouterr().out)
    assert cli.main(["config", "--check", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
    path.write_text("[mqtt]\nqos = 7\n")
    assert cli.main(["config", "--check", str(path)]) == 2  # a wrong config is a usage error
    assert "mqtt.qos" in capsys.readouterr().err


def test_run_refuses_a_bad_config_before_starting(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[smoothing]\nframez = 3\n")
    assert cli.main(["run", "--config", str(path), "--frames", "1"]) == 2
    assert "unknown key smoothing.framez" in capsys.readouterr().err


@pytest.mark.parametrize("options, expected", [
    (["--model", "mobilenet_v3"], "model.name: unknown model 'mobilenet_v3'"),
    (["--broker", "mqtt://127.0.0.1:1"], "mqtt.tls_insecure: TLS options are set"),
])
def test_run_checks_the_command_line_overrides_too(options, expected, tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[mqtt]\nbroker = 'mqtts://127.0.0.1:1'\ntls_insecure = true\n")
    argv = ["run", "--config", str(path), "--state", str(tmp_path / "s"), "--frames", "1"]
    assert cli.main(argv + options) != 0
    assert expected in capsys.readouterr().err

