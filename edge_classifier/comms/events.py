"""Events: what buttons, the keyboard and MQTT commands ask the loop to do.

Producers (gpiozero callbacks, the keyboard thread, paho's network thread) only put events on
the loop's queue; the capture/inference thread applies them between frames. ``request_id``
echoes an MQTT command's ``id`` in its result; ``origin`` says where an event came from
("button", "keyboard", "mqtt", "web", "demo").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional


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
class AddClass(Event):
    """Create an empty class (its samples come later)."""

    ACTION: ClassVar[str] = "add_class"

    class_name: str = ""


@dataclass(frozen=True)
class DeleteSample(Event):
    """Delete one sample of a class, by its id."""

    ACTION: ClassVar[str] = "delete_sample"

    class_name: str = ""
    sample_id: str = ""


@dataclass(frozen=True)
class FileInbox(Event):
    """File a frame of the inbox into a class: it becomes a sample (creating the class)."""

    ACTION: ClassVar[str] = "file_inbox"

    item: str = ""
    class_name: str = ""


@dataclass(frozen=True)
class DiscardInbox(Event):
    """Forget a frame of the inbox."""

    ACTION: ClassVar[str] = "discard_inbox"

    item: str = ""


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
