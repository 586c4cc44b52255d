"""The output bus: every event the device publishes goes to every transport on it.

A transport is anything with the publisher interface of
:class:`~edge_classifier.comms.publisher.Publisher` and a ``name`` (``"stdout"``, ``"mqtt"``,
``"web"``): ``start``, ``stop``, ``close``, ``set_classes``, ``publish_state``,
``publish_prediction``, ``publish_stats``, ``publish_result``, ``publish_snapshot`` and a
``stats`` dict. Adding a transport is adding one module and one :meth:`Bus.add`::

    bus = Bus([StdoutPublisher(config)])
    bus.add(MqttPublisher(config, router))
    bus.publish_prediction({...})              # to both
    bus.answer(event, result)                  # only to the transport the command came by

A transport that raises never stops the others, nor the loop: the error is logged and counted
in ``stats["transport_errors"]``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List

log = logging.getLogger(__name__)


class Bus:
    """Fans the device's output out to its transports."""

    def __init__(self, transports: Iterable[Any] = ()):
        self.transports: List[Any] = []
        self.errors = 0
        for t in transports:
            self.add(t)

    def add(self, transport: Any) -> Any:
        self.transports.append(transport)
        return transport

    def get(self, name: str):
        """The transport called ``name``, or None."""
        return next((t for t in self.transports if getattr(t, "name", None) == name), None)

    def _each(self, method: str, *args: Any) -> None:
        for t in self.transports:
            try:
                getattr(t, method)(*args)
            except Exception:  # noqa: BLE001 - one broken transport must not stop the rest
                self.errors += 1
                log.exception("%s.%s failed", getattr(t, "name", type(t).__name__), method)

    # -- the publisher interface, fanned out ---------------------------------------------------
    def start(self) -> "Bus":
        self._each("start")
        return self

    def stop(self) -> None:
        self._each("stop")

    def close(self) -> None:
        self._each("close")

    def set_classes(self, names) -> None:
        self._each("set_classes", list(names))

    def publish_state(self, label: str) -> None:
        self._each("publish_state", label)

    def publish_prediction(self, payload: Dict[str, Any]) -> None:
        self._each("publish_prediction", payload)

    def publish_stats(self, payload: Dict[str, Any]) -> None:
        self._each("publish_stats", payload)

    def publish_snapshot(self, jpeg: bytes) -> None:
        self._each("publish_snapshot", jpeg)

    def raise_if_failed(self) -> None:
        """Raise the error of a transport that gave up for good (e.g. MQTT whose network
        thread keeps dying), so the device exits non-zero instead of running on deaf."""
        for t in self.transports:
            check = getattr(t, "raise_if_failed", None)
            if check is not None:
                check()

    def answer(self, event: Any, result: Dict[str, Any]) -> bool:
        """Send a command's result to the transport it came by; False if none (a button, the
        keyboard: their results are only logged)."""
        transport = self.get(getattr(event, "origin", ""))
        if transport is None:
            return False
        try:
            transport.publish_result(result)
        except Exception:  # noqa: BLE001
            self.errors += 1
            log.exception("%s.publish_result failed", transport.name)
            return False
        return True

    @property
    def stats(self) -> Dict[str, Any]:
        """Counters summed over the transports, plus each transport's own under its name."""
        total: Dict[str, Any] = {"transport_errors": self.errors}
        for t in self.transports:
            own = dict(getattr(t, "stats", {}) or {})
            total[getattr(t, "name", type(t).__name__)] = own
            for key, value in own.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        return total
