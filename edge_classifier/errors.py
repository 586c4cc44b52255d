"""The exceptions edge-classifier raises.

One root, :class:`EdgeClassifierError`, one base per subsystem, and leaves that also inherit the
matching builtin, so callers may catch either (``except ModelError`` or ``except ValueError``)::

    try:
        backbone = Backbone.from_name("mobilenet_v2_1.0_224_quant")
    except ModelNotInstalledError as exc:
        print(exc)  # names the model and the command that installs it
"""

from __future__ import annotations

from typing import Optional


class EdgeClassifierError(Exception):
    """Root of every error edge-classifier raises on purpose."""


# --- usage --------------------------------------------------------------------------------------
class UsageError(EdgeClassifierError, ValueError):
    """A command was given a wrong argument (the CLI exits with status 2); the message names it."""


# --- models, manifest and downloads -----------------------------------------------------------
class ModelError(EdgeClassifierError):
    """A model cannot be found, fetched, loaded or used."""


class UnknownModelError(ModelError, KeyError):
    """The name is not in the model manifest."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelNotInstalledError(ModelError, FileNotFoundError):
    """The model is in the manifest but has not been fetched into the data directory."""


class FetchError(ModelError, OSError):
    """Downloading or copying a file from the mirror failed; nothing was installed."""


class ChecksumError(FetchError):
    """A downloaded file does not have the SHA-256 the manifest promises."""


class ModelModifiedError(ModelError, ValueError):
    """An installed file has not the manifest's size or SHA-256: it changed after its fetch."""


class InvalidModelError(ModelError, ValueError):
    """A file is not a usable TFLite image model (empty, corrupt, wrong shape or type)."""


class RuntimeMissingError(ModelError, ImportError):
    """Neither ai-edge-litert nor tflite-runtime is installed."""


class ExportError(ModelError):
    """The trained classifier cannot be written as one TFLite model; nothing was written."""


class UnsupportedHeadError(ExportError, ValueError):
    """The state's head has no TFLite form; the message names the heads that export."""


# --- images -------------------------------------------------------------------------------------
class ImageError(EdgeClassifierError, ValueError):
    """An image file is missing, unreadable, truncated or not an image."""


# --- data sets ----------------------------------------------------------------------------------
class DatasetError(EdgeClassifierError, ValueError):
    """A folder or CSV data set is malformed."""


class DatasetWarning(UserWarning):
    """A data set is usable but too small for what was asked (e.g. fewer images than k shots)."""


# --- configuration ------------------------------------------------------------------------------
class ConfigError(EdgeClassifierError, ValueError):
    """A configuration file or value is wrong; the message names the key."""


# --- the sample store ---------------------------------------------------------------------------
class StoreError(EdgeClassifierError):
    """The sample store cannot do what was asked; nothing already stored was changed."""


class ClassNameError(StoreError, ValueError):
    """A class name is empty, too long, path-like or has control characters."""


class ClassLimitError(StoreError, ValueError):
    """The state already holds ``head.max_classes`` classes: a new class is refused."""


class UnknownClassError(StoreError, KeyError):
    """No class of that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StorageFullError(StoreError, OSError):
    """The disk is full: the sample was not stored."""


class ReadOnlyStoreError(StoreError, PermissionError):
    """The state directory cannot be written."""


class HeadLoadError(StoreError):
    """A saved head is corrupt or belongs to another backbone; it can be rebuilt from samples."""


class StateLockedError(StoreError, BlockingIOError):
    """Another process holds the state directory; the message names it and what to do."""


class InboxItemNotFoundError(StoreError, KeyError):
    """No frame of that id in the inbox (filed or discarded already, or never there)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --- heads --------------------------------------------------------------------------------------
class HeadError(EdgeClassifierError, ValueError):
    """Root of every error raised on purpose by :mod:`edge_classifier.learning.heads`."""


class _NoQuoteKeyError(KeyError):
    """A ``KeyError`` whose ``str`` is the plain message (``KeyError`` quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class EmptyHeadError(HeadError):
    """The head holds no samples (never fitted, or every sample was removed)."""


class InvalidEmbeddingError(HeadError):
    """An embedding has the wrong shape or length, or holds NaN or infinity."""


class InvalidLabelError(HeadError):
    """A label is not an integer in ``0..C-1``, or labels and embeddings disagree in number."""


class InvalidParameterError(HeadError):
    """A hyper-parameter is out of range or of the wrong type."""


class SampleNotFoundError(HeadError, _NoQuoteKeyError):
    """:meth:`remove` was asked for a sample the head does not hold."""


class UnknownHeadError(HeadError, _NoQuoteKeyError):
    """:func:`make_head` or :func:`load_head` got a head name that is not registered."""


class StateError(HeadError):
    """A saved head state (arrays + metadata) is incomplete, inconsistent or from another version."""


# --- frame sources ------------------------------------------------------------------------------
class SourceError(EdgeClassifierError):
    """A frame source cannot deliver frames."""


class CameraError(SourceError, RuntimeError):
    """The camera cannot be opened, configured or read; the message says what to check."""


class NoImagesError(SourceError, ValueError):
    """A replay has no readable image at all; the message names the path(s)."""


class EndOfStream(SourceError, EOFError):
    """A non-looping replay has delivered its last frame."""


class SourceClosedError(SourceError, ValueError):
    """``read()`` on a closed source."""


class NoFrameYet(SourceError, TimeoutError):
    """A source fed from outside (a browser's camera) has no new frame yet; the loop applies
    its events and asks again."""


# --- buttons and LEDs ---------------------------------------------------------------------------
class GpioError(EdgeClassifierError, RuntimeError):
    """A button or LED cannot be set up (pin in use, no pin factory, invalid pin)."""


# --- the device ---------------------------------------------------------------------------------
class DeviceError(EdgeClassifierError):
    """The device cannot do what an event asked (nothing was changed)."""


class EventError(DeviceError, ValueError):
    """An event makes no sense now: no class given and none captured yet, no frame yet, a
    class bound to a button in the config."""


# --- transports and commands --------------------------------------------------------------------
class CommsError(EdgeClassifierError):
    """Publishing or receiving over a transport (MQTT, stdout, the web) failed or was misused."""


class MqttError(CommsError):
    """Publishing over MQTT failed or was misused."""


class PublisherClosedError(MqttError, RuntimeError):
    """The publisher was stopped and cannot be started again."""


class MqttFatalError(MqttError, RuntimeError):
    """MQTT stopped for good: paho's network thread died again the same way after a new client
    was built (e.g. a client id too long to encode). The device should exit non-zero."""


class BrokerUrlError(MqttError, ValueError):
    """``mqtt.broker`` is not a valid ``mqtt://`` or ``mqtts://`` URL (messages hide secrets)."""


class CommandError(CommsError, ValueError):
    """A command is malformed; the message says why (and never echoes a whole payload).

    ``action`` and ``request_id`` (when it could be read) let the answer echo them.
    """

    def __init__(self, message: str, action: str = "", request_id: Optional[str] = None):
        super().__init__(message)
        self.action = action
        self.request_id = request_id


class WebError(CommsError):
    """The web studio cannot serve or do what a request asked."""


class WebServerError(WebError, OSError):
    """The web studio cannot listen on its address (in use, not this machine's, no right)."""


class UploadError(WebError, ValueError):
    """An upload is too large, has too many files or pixels, or is not an image."""


class CommandQueueError(CommsError, RuntimeError):
    """A valid command could not be handed to the loop (its queue raised)."""

    def __init__(self, action: str, request_id: Optional[str], cause: BaseException):
        super().__init__(f"{action}: the device could not accept the command "
                         f"({type(cause).__name__})")
        self.action = action
        self.request_id = request_id


# --- the fleet ----------------------------------------------------------------------------------
class FleetError(CommsError):
    """The fleet (devices of one group sharing samples through the broker) cannot go on."""


class FleetMessageError(FleetError, ValueError):
    """A received fleet message is malformed, oversized, unsigned, forged, replayed or from
    another group; it is dropped and counted, never applied."""


class FleetStateError(FleetError, OSError):
    """The fleet's file in the state directory (``fleet.json``) cannot be read or written."""
