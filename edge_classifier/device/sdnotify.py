"""systemd notifications (``Type=notify`` services and the watchdog), without libsystemd.

::

    notifier = Notifier()                 # reads $NOTIFY_SOCKET; does nothing when it is unset
    notifier.ready("classifying")         # READY=1 + STATUS=classifying
    interval = watchdog_interval()        # half of WatchdogSec=, or None
    ...
    notifier.watchdog()                   # WATCHDOG=1, every `interval` seconds from the loop
    notifier.stopping()                   # STOPPING=1 on a clean shutdown

Each call sends one datagram (``KEY=value`` lines) to the AF_UNIX SOCK_DGRAM socket named by
``$NOTIFY_SOCKET``; a leading ``@`` means Linux's abstract namespace. Sending never blocks and
never raises: a vanished or full socket is counted in :attr:`Notifier.errors` and logged once,
so a restarting systemd can not take the device down with it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Mapping, Optional

__all__ = ["Notifier", "watchdog_interval"]

_log = logging.getLogger(__name__)


def _address(value: str):
    """The socket address for a $NOTIFY_SOCKET value, or None if unsupported."""
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. vsock: addresses (not used on a Pi)


class Notifier:
    """Send sd_notify(3) messages to systemd.

    ``address`` defaults to ``$NOTIFY_SOCKET`` (read from ``environ``, default ``os.environ``);
    with neither, every method does nothing and returns False.
    """

    def __init__(self, address: Optional[str] = None,
                 environ: Optional[Mapping[str, str]] = None):
        if address is None:
            address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        self.address = address or ""
        self._target = _address(self.address) if self.address else None
        if self.address and self._target is None:
            _log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name; "
                         "systemd notifications are off", self.address)
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._warned = False
        self._closed = False
        self.sent = 0
        self.errors = 0

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._target is not None and not self._closed

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=value`` fields in one datagram (``notify(READY=1, STATUS="ok")``).

        Returns True if it was sent; False when disabled or when sending failed (counted).
        """
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key}={text}")
        return self._send("\n".join(lines))

    def ready(self, status: Optional[str] = None) -> bool:
        """``READY=1`` (start-up finished), with an optional status line."""
        return self.notify(READY=1) if status is None else self.notify(READY=1, STATUS=status)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping for ``WatchdogSec=``."""
        return self.notify(WATCHDOG=1)

    def stopping(self, status: Optional[str] = None) -> bool:
        """``STOPPING=1`` (a clean shutdown has begun)."""
        return self.notify(STOPPING=1) if status is None else self.notify(STOPPING=1,
                                                                         STATUS=status)

    def status(self, text: str) -> bool:
        """``STATUS=text``: the line ``systemctl status`` shows."""
        return self.notify(STATUS=text)

    def _send(self, message: str) -> bool:
        if not self.enabled or not message:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.setblocking(False)
                self._sock.sendto(message.encode("utf-8"), self._target)
            except OSError as exc:
                self.errors += 1
                if not self._warned:
                    self._warned = True
                    _log.warning("cannot notify systemd at %s (%s); counting further failures "
                                 "silently", self.address, exc)
                return False
            self.sent += 1
            return True

    def close(self) -> None:
        """Close the socket; later calls do nothing. Safe to call twice."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"<Notifier {state} address={self.address!r} sent={self.sent} errors={self.errors}>"


def watchdog_interval(environ: Optional[Mapping[str, str]] = None,
                      pid: Optional[int] = None) -> Optional[float]:
    """Seconds between watchdog pings: half of ``$WATCHDOG_USEC``, or None if not asked for.

    None too when ``$WATCHDOG_PID`` names another process (the variables were inherited) or a
    value is not a positive whole number.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000 / 2
