"""Remote commands: what arrives on ``<base>/cmd/<action>`` becomes an event
(:mod:`~edge_classifier.comms.events`), or a :class:`CommandError` that says what is wrong with it::

    parse_command("capture", b'{"class": "apple", "count": 5, "id": "r1"}', 4096)
    # -> Capture(origin="mqtt", request_id="r1", class_name="apple", count=5)
    parse_command("capture", b'{"class": "../x"}', 4096)
    # CommandError: capture: "class": class name '../x' contains a path separator

Actions and their JSON object payloads (every one may also carry ``"id"``, a string of at most
64 characters echoed in the result on ``<base>/cmd/result``):

========================  ================================================================
``capture``               ``{"class": str, "count": int = 1}`` (count 1..100)
``delete_last``           ``{"class": str}``
``clear_class``           ``{"class": str}``
``delete_class``          ``{"class": str}``
``rename_class``          ``{"class": str, "to": str}``
``add_class``             ``{"class": str}`` (an empty class)
``delete_sample``         ``{"class": str, "sample": str}`` (a sample id: 20 hex digits)
``file_inbox``            ``{"item": str, "class": str}`` (an inbox frame becomes a sample)
``discard_inbox``         ``{"item": str}``
``snapshot``              ``{}`` (an empty payload is accepted too)
========================  ================================================================

Parsing is pure (no I/O), so every rule is tested without a broker; the publisher sends
:func:`error_result` for a bad command at once, and the device loop answers the good ones
with :func:`result` once it has applied them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, Optional

from edge_classifier.errors import CommandError, CommandQueueError
from edge_classifier.comms.events import (AddClass, Capture, ClearClass, DeleteClass, DeleteLast,
                                         DeleteSample, DiscardInbox, Event, FileInbox,
                                         RenameClass, Snapshot)
from edge_classifier.core.names import validate_class_name

ORIGIN = "mqtt"
MAX_ID_LENGTH = 64
MAX_COUNT = 100
ID_LENGTH = 20  # sample and inbox ids
RESULT_ACTION = "result"  # <base>/cmd/result carries answers, never commands


def result(action: str, ok: bool, error: Optional[str] = None, request_id: Optional[str] = None,
           **details: Any) -> Dict[str, Any]:
    """A command result: ``{"ok": ..., "action": ..., "id": ..., ["error": ...], **details}``."""
    answer: Dict[str, Any] = {"ok": bool(ok), "action": action, "id": request_id}
    if error is not None:
        answer["error"] = error
    answer.update(details)
    return answer


def error_result(exc: "CommandError | CommandQueueError") -> Dict[str, Any]:
    """The failed result published for a bad or unqueueable command."""
    return result(exc.action, False, error=str(exc), request_id=exc.request_id)


def _class(action: str, fields: Dict[str, Any], key: str = "class") -> str:
    try:
        return validate_class_name(fields[key])
    except ValueError as exc:
        raise CommandError(f'{action}: "{key}": {exc}', action) from None


def _count(action: str, fields: Dict[str, Any]) -> int:
    count = fields.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int):
        raise CommandError(f'{action}: "count" must be a whole number, not {_show(count)}',
                           action)
    if not 1 <= count <= MAX_COUNT:
        raise CommandError(f'{action}: "count" must be between 1 and {MAX_COUNT}, not '
                           f'{_show(count)}', action)
    return count


def _id(action: str, fields: Dict[str, Any], key: str) -> str:
    """A sample or inbox id: 20 lower-case hex digits (what the store and the inbox make)."""
    value = fields[key]
    if not (isinstance(value, str) and len(value) == ID_LENGTH
            and all(c in "0123456789abcdef" for c in value)):
        raise CommandError(f'{action}: "{key}" must be an id of {ID_LENGTH} hex digits, not '
                           f'{_show(value)}', action)
    return value


def _rename(action: str, fields: Dict[str, Any], rid: Optional[str]) -> Event:
    old, new = _class(action, fields), _class(action, fields, "to")
    if old == new:
        raise CommandError(f'{action}: "class" and "to" are the same name', action)
    return RenameClass(origin=ORIGIN, request_id=rid, class_name=old, new_name=new)


# action -> (required fields, optional fields, builder(action, fields, request_id))
_ACTIONS: Dict[str, tuple] = {
    "capture": (("class",), ("count",), lambda a, f, rid: Capture(
        origin=ORIGIN, request_id=rid, class_name=_class(a, f), count=_count(a, f))),
    "delete_last": (("class",), (), lambda a, f, rid: DeleteLast(
        origin=ORIGIN, request_id=rid, class_name=_class(a, f))),
    "clear_class": (("class",), (), lambda a, f, rid: ClearClass(
        origin=ORIGIN, request_id=rid, class_name=_class(a, f))),
    "delete_class": (("class",), (), lambda a, f, rid: DeleteClass(
        origin=ORIGIN, request_id=rid, class_name=_class(a, f))),
    "rename_class": (("class", "to"), (), _rename),
    "add_class": (("class",), (), lambda a, f, rid: AddClass(
        origin=ORIGIN, request_id=rid, class_name=_class(a, f))),
    "delete_sample": (("class", "sample"), (), lambda a, f, rid: DeleteSample(
        origin=ORIGIN, request_id=rid, class_name=_class(a, f), sample_id=_id(a, f, "sample"))),
    "file_inbox": (("item", "class"), (), lambda a, f, rid: FileInbox(
        origin=ORIGIN, request_id=rid, item=_id(a, f, "item"), class_name=_class(a, f))),
    "discard_inbox": (("item",), (), lambda a, f, rid: DiscardInbox(
        origin=ORIGIN, request_id=rid, item=_id(a, f, "item"))),
    "snapshot": ((), (), lambda a, f, rid: Snapshot(origin=ORIGIN, request_id=rid)),
}
ACTIONS = tuple(_ACTIONS)


def _printable(text: str) -> str:
    """``text`` with lone surrogates (from JSON's ``"\\ud800"``) escaped: results encode as
    UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    except (ValueError, RecursionError):  # nested nearly as deep as json.loads allows
        text = type(value).__name__
    return _printable(text if len(text) <= 40 else text[:37] + "...")


def _show_key(key: str) -> str:
    return _printable(json.dumps(key if len(key) <= 40 else key[:37] + "...", ensure_ascii=False))


def _request_id(action: str, fields: Dict[str, Any]) -> Optional[str]:
    if "id" not in fields:
        return None
    rid = fields["id"]
    if not isinstance(rid, str):
        raise CommandError(f'{action}: "id" must be a string, not {_show(rid)}', action)
    if len(rid) > MAX_ID_LENGTH:
        raise CommandError(f'{action}: "id" is longer than {MAX_ID_LENGTH} characters', action)
    if _printable(rid) != rid:
        raise CommandError(f'{action}: "id" is not valid Unicode text', action)
    return rid


def _decode(action: str, payload: bytes, max_payload: int) -> Dict[str, Any]:
    if len(payload) > max_payload:
        raise CommandError(f"{action}: payload is {len(payload)} bytes, more than the limit of "
                           f"{max_payload}", action)
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(f"{action}: payload is not UTF-8 text", action) from None
    if not text.strip():
        return {}
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError):
        raise CommandError(f"{action}: payload is not valid JSON", action) from None
    if not isinstance(fields, dict):
        raise CommandError(f"{action}: payload must be a JSON object, not "
                           f"{type(fields).__name__}", action)
    return fields


def parse_command(action: str, payload: bytes, max_payload: int,
                  origin: str = ORIGIN) -> Event:
    """Turn one command message into an event (origin ``"mqtt"``), or raise :class:`CommandError`.

    ``action`` is the last topic level; ``payload`` the raw message body. The error carries the
    action and, when it could be read, the request ``id``, so :func:`error_result` can
    echo it.
    """
    shown = _printable(action if len(action) <= MAX_ID_LENGTH
                       else action[:MAX_ID_LENGTH - 3] + "...")
    spec = _ACTIONS.get(action)
    fields = _decode(shown, payload, max_payload)
    rid: Optional[str] = None
    try:
        rid = _request_id(shown, fields)
        if spec is None:
            raise CommandError(f"unknown action {shown!r}; known actions: {', '.join(ACTIONS)}",
                               shown)
        required, optional, build = spec
        missing = [k for k in required if k not in fields]
        if missing:
            raise CommandError(f'{action}: missing field "{missing[0]}"', action)
        extra = sorted(set(fields) - set(required) - set(optional) - {"id"})
        if extra:
            allowed = ", ".join(f'"{k}"' for k in (*required, *optional, "id"))
            raise CommandError(f"{action}: unknown field {_show_key(extra[0])}; allowed: "
                               f"{allowed}", action)
        event = build(action, fields, rid)
        return event if origin == ORIGIN else dataclasses.replace(event, origin=origin)
    except CommandError as exc:
        exc.request_id = rid
        raise


def handle_command(action: str, payload: bytes, max_payload: int,
                   on_event: Callable[[Event], Any],
                   retained: bool = False, origin: str = ORIGIN) -> Optional[Dict[str, Any]]:
    """Handle a message on ``<base>/cmd/<action>``; return the result to publish at once.

    None means nothing to answer now: the command was passed to ``on_event`` (the loop answers
    it), or the message is an answer on ``cmd/result``. A bad command, or a *retained* one (it
    would run again on every reconnect), gets a failed result. When ``on_event`` raises,
    :class:`CommandQueueError` is raised (the original exception as its ``__cause__``) for the
    caller to log and answer with :func:`error_result`. ``origin`` names the transport.
    """
    if action == RESULT_ACTION:
        return None
    try:
        event = parse_command(action, payload, max_payload, origin)
        if retained:
            raise CommandError(f"{action}: retained commands are not run (they would run again "
                               f"on every reconnect); clear it with an empty retained message",
                               action, event.request_id)
    except CommandError as exc:
        return error_result(exc)
    try:
        on_event(event)
    except Exception as exc:
        raise CommandQueueError(action, event.request_id, exc) from exc
    return None


class CommandRouter:
    """The one way commands reach the loop, whatever transport they came by::

        router = CommandRouter(device.post, max_payload=4096)
        answer = router.handle("mqtt", "capture", b'{"class": "apple"}')   # None: queued

    The event carries the transport's name as its ``origin``, so the loop's answer goes back
    to that transport only (:meth:`edge_classifier.comms.bus.Bus.answer`).
    """

    def __init__(self, post: Callable[[Event], Any], max_payload: int = 4096):
        self.post = post
        self.max_payload = max_payload

    def handle(self, origin: str, action: str, payload: bytes,
               retained: bool = False) -> Optional[Dict[str, Any]]:
        """Parse and queue one command; the failed result to send at once, or None."""
        return handle_command(action, payload, self.max_payload, self.post, retained=retained,
                              origin=origin)
