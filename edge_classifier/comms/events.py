"""Events: what buttons, the keyboard and MQTT commands ask the loop to do.

Producers (gpiozero callbacks, the keyboard thread, paho's network thread) only put events on
the loop's queue; the capture/inference thread applies them between frames. ``request_id``
echoes an MQTT command's ``id`` in its result; ``origin`` says where an event came from
("button", "keyboard", "mqtt", "demo").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Event:
    origin: str = "internal"
    request_id: Optional[str] = None


@dataclass(frozen=True)
class Capture(Event):
    """Capture ``count`` samples of a class from the next frames (creating the class)."""

    class_name: str = ""
    count: int = 1


@dataclass(frozen=True)
class DeleteLast(Event):
    """Delete a class's newest sample (None: the class captured last)."""

    class_name: Optional[str] = None


@dataclass(frozen=True)
class ClearClass(Event):
    """Delete every sample of a class (None: the class captured last), keeping the class."""

    class_name: Optional[str] = None


@dataclass(frozen=True)
class DeleteClass(Event):
    class_name: str = ""


@dataclass(frozen=True)
class RenameClass(Event):
    class_name: str = ""
    new_name: str = ""


@dataclass(frozen=True)
class Snapshot(Event):
    """Publish the current frame as a JPEG."""


@dataclass(frozen=True)
class Stop(Event):
    """Finish the loop cleanly."""
