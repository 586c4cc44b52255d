"""edge-classifier: teach a Raspberry Pi camera new classes on the spot.

A quantised MobileNet (TFLite, run with LiteRT) turns each frame into an embedding; a head fitted
in NumPy on the device learns from a handful of samples; predictions are smoothed and published
over MQTT. The package imports on any machine: the TFLite runtime, picamera2, gpiozero and paho
are imported only by the modules that need them.

Quick start::

    from edge_classifier.backbone.model import Backbone
    from edge_classifier.frames.images import load_image

    backbone = Backbone.from_name("mobilenet_v2_1.0_224_quant")
    result = backbone.run(load_image("cat.bmp"))
    print(result.embedding.shape, backbone.top_k(result.scores, 3))
"""

from __future__ import annotations

__version__ = "0.1.0"

from edge_classifier.errors import (  # noqa: F401  (re-exported)
    ChecksumError,
    ConfigError,
    DatasetError,
    EdgeClassifierError,
    FetchError,
    ImageError,
    InvalidModelError,
    ModelError,
    ModelNotInstalledError,
    RuntimeMissingError,
    UnknownModelError,
)
