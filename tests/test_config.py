"""Configuration: the example is valid, every bad key or value is named."""

from __future__ import annotations

import pytest

from edge_classifier import cli
from edge_classifier.config import Config, example_text, load_config, parse_config
from edge_classifier.errors import ConfigError


def test_example_is_valid_and_equals_the_defaults():
    config = parse_config(example_text())
    defaults = Config()
    assert config.replace(device_id="x") == defaults.replace(device_id="x")


def test_classes_and_pins():
    config = parse_config('[[classes]]\nname = "apple"\nbutton = 17\nled = 27\n'
                          '[[classes]]\nname = "pear"\n')
    assert [(c.name, c.button, c.led) for c in config.classes] == [("apple", 17, 27),
                                                                   ("pear", None, None)]


@pytest.mark.parametrize("text,key", [
    ("colour = 1", "unknown key colour"),
    ("[smoothing]\nthreshhold = 0.5", "unknown key smoothing.threshhold"),
    ("[mqtt]\nqos = 3", "mqtt.qos: must be between 0 and 2"),
    ("[mqtt]\nport = 1883", "unknown key mqtt.port"),
    ("[mqtt]\nkeepalive = 'long'", "mqtt.keepalive: expected a whole number"),
    ("[mqtt]\ncommands = 'yes'", "mqtt.commands: expected true or false"),
    ("[mqtt]\nbroker = 'http://host'", "mqtt.broker: broker URL"),
    ("[mqtt]\nbase_topic = 'a/#'", "mqtt.base_topic"),
    ("[source]\nkind = 'webcam'", "source.kind: must be one of"),
    ("[smoothing]\nthreshold = 1.5", "smoothing.threshold: must be between 0 and 1"),
    ("[head]\ncrops = 9", "head.crops"),
    ("[[classes]]\nbutton = 3", "classes[0].name: required"),
    ("[[classes]]\nname = '../x'", "classes[0].name: class name '../x' contains a path"),
    ("[[classes]]\nname = 'a'\nbutton = 99", "classes[0].button: GPIO pin must be between"),
    ("[[classes]]\nname = 'a'\n[[classes]]\nname = 'a'", "classes[1].name: 'a' is listed twice"),
    ("[[classes]]\nname = 'a'\nbutton = 4\n[[classes]]\nname = 'b'\nled = 4",
     "classes[1].led: GPIO 4 is already used by classes[0].button"),
    ("[gpio]\nlong_press = 3.0\nvery_long_press = 2.0", "gpio.very_long_press"),
    ("device_id = 'my pi'", "device_id: use letters"),
    ("source = 3", "source: expected a table"),
    ("[mqtt\n", "not valid TOML"),
])
def test_bad_config_names_the_key(text, key):
    with pytest.raises(ConfigError, match=None) as info:
        parse_config(text, "c.toml")
    assert key in str(info.value) and str(info.value).startswith("c.toml: ")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "nope.toml"))


def test_cli_example_and_check(tmp_path, capsys):
    assert cli.main(["config", "--example"]) == 0
    path = tmp_path / "c.toml"
    path.write_text(capsys.readouterr().out)
    assert cli.main(["config", "--check", str(path)]) == 0
    path.write_text("[mqtt]\nqos = 7\n")
    assert cli.main(["config", "--check", str(path)]) == 2  # a wrong config is a usage error
    assert "mqtt.qos" in capsys.readouterr().err


def test_run_refuses_a_bad_config_before_starting(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[smoothing]\nframez = 3\n")
    assert cli.main(["run", "--config", str(path), "--frames", "1"]) == 2
    assert "unknown key smoothing.framez" in capsys.readouterr().err
