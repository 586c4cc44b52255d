"""The [fleet] table: off by default, and every bad value refused at load naming its key,
never showing the secret."""

import pytest

from edge_classifier.config import load_config
from edge_classifier.config.example import example_text
from edge_classifier.errors import ConfigError

SECRET = "s3cret-group-key-0123456789"


def load(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path)


def test_the_fleet_is_off_by_default(tmp_path):
    assert load(tmp_path, "").fleet.group == ""
    assert "[fleet]" in example_text()


def test_a_fleet_needs_a_broker_and_a_long_enough_key(tmp_path):
    with pytest.raises(ConfigError, match="fleet.group: .*mqtt.broker"):
        load(tmp_path, f'[fleet]\ngroup = "shop"\nkey = "{SECRET}"\n')
    with pytest.raises(ConfigError, match="fleet.key: a fleet needs"):
        load(tmp_path, '[mqtt]\nbroker = "mqtt://127.0.0.1"\n[fleet]\ngroup = "shop"\n')
    with pytest.raises(ConfigError, match="fleet.key: the secret is shorter") as caught:
        load(tmp_path, '[mqtt]\nbroker = "mqtt://127.0.0.1"\n[fleet]\ngroup = "shop"\n'
                       'key = "short"\n')
    assert "short" not in str(caught.value).split(":", 1)[1].replace("shorter", "")


def test_a_group_name_must_be_a_safe_topic_level(tmp_path):
    for bad in ("a/b", "+", "#", "x" * 65, "é"):
        with pytest.raises(ConfigError, match="fleet.group"):
            load(tmp_path, f'[mqtt]\nbroker = "mqtt://127.0.0.1"\n[fleet]\ngroup = "{bad}"\n'
                           f'key = "{SECRET}"\n')


def test_the_key_file_is_read_and_its_problems_named(tmp_path):
    key_file = tmp_path / "fleet.key"
    key_file.write_text(SECRET + "\n")
    cfg = load(tmp_path, f'[mqtt]\nbroker = "mqtt://127.0.0.1"\n[fleet]\ngroup = "shop"\n'
                         f'key_file = "{key_file}"\nmode = "follow"\n')
    assert cfg.fleet.mode == "follow"
    with pytest.raises(ConfigError, match="fleet.key_file: cannot read"):
        load(tmp_path, f'[mqtt]\nbroker = "mqtt://127.0.0.1"\n[fleet]\ngroup = "shop"\n'
                       f'key_file = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match="not both"):
        load(tmp_path, f'[fleet]\nkey = "{SECRET}"\nkey_file = "{key_file}"\n')
    with pytest.raises(ConfigError, match="fleet.mode"):
        load(tmp_path, '[fleet]\nmode = "both"\n')
