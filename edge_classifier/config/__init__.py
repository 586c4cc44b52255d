"""Configuration: TOML in, frozen dataclasses out, every rule checked once, at load.

::

    config = load_config("/etc/edge-classifier/config.toml")
    config.mqtt.broker, config.smoothing.frames
"""

from edge_classifier.config.schema import (  # noqa: F401  (the public names)
    DEFAULT_PATH, ClassConfig, Config, GpioConfig, HeadConfig, ModelConfig, MqttConfig,
    SmoothingConfig, SourceConfig, example_text, load_config, parse_config)
from edge_classifier.config.broker import BrokerUrl, parse_broker_url, redact  # noqa: F401
