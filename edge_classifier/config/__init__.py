"""Configuration: TOML in, frozen dataclasses out, every rule checked once, at load.

::

    config = load_config("/etc/edge-classifier/config.toml")
    config.mqtt.broker, config.smoothing.frames
    validate_config(config.replace(device_id="küche"))   # ConfigError: device_id: use ASCII ...

Modules: :mod:`~.keys` (the ``key()`` helper: default, help, range, choices in one place),
:mod:`~.schema` (the dataclasses), :mod:`~.broker` (broker URLs, the password file),
:mod:`~.validation` (the rules between keys), :mod:`~.loading` (TOML files),
:mod:`~.example` (the example file, written from the schema).
"""

from edge_classifier.config.broker import (  # noqa: F401  (the public names)
    BrokerUrl, parse_broker_url, read_password_file, redact)
from edge_classifier.config.example import example_text  # noqa: F401
from edge_classifier.config.loading import DEFAULT_PATH, load_config, parse_config  # noqa: F401
from edge_classifier.config.schema import (  # noqa: F401
    ClassConfig, Config, GpioConfig, HeadConfig, ModelConfig, MqttConfig, SmoothingConfig,
    FleetConfig, SourceConfig, WebConfig)
from edge_classifier.config.validation import (  # noqa: F401
    is_loopback, parse_listen, read_web_password, validate_config, web_hosts)
