"""paho-mqtt 2.x, imported on first use (the package imports without it), and what the MQTT
publisher needs around it::

    paho, Client = load_paho()
    client = Client(paho.CallbackAPIVersion.VERSION2, client_id="pi", protocol=paho.MQTTv5)
    client.on_network_exit = lambda client, error: print("network thread ended:", error)
    ...
    discard(client)   # after its network thread died: no callbacks, sockets closed

``Client`` is paho's client plus ``connect_error`` (why the last connection attempt failed),
``network_thread`` (the ``loop_start()`` thread, once it has run) and ``on_network_exit``
(called on that thread as it ends, with the exception that ended it or None). How the thread
dies, from paho 2.2's source: ``loop_start()`` runs ``_thread_main()`` -> ``loop_forever()``;
anything but ``OSError`` raised inside, e.g. ``struct.error`` from packing a CONNECT whose
client id is longer than 65,535 bytes, ends it, and paho only sets ``_thread = None``.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any, Callable, Optional


def load_paho():
    """paho (imported on first use) and a client that remembers why connecting failed and tells
    ``on_network_exit(client, exception_or_None)`` when its network thread ends."""
    import paho.mqtt.client as paho

    class Client(paho.Client):
        connect_error: Optional[BaseException] = None
        network_thread: Optional[threading.Thread] = None
        on_network_exit: Optional[Callable[[Any, Optional[BaseException]], None]] = None

        def reconnect(self):  # paho's thread calls this for every (re)connect attempt
            if self.network_thread is None:
                self.network_thread = threading.current_thread()
            try:
                return super().reconnect()
            except OSError as exc:
                self.connect_error = exc
                raise

        def _thread_main(self) -> None:  # paho 2.x: the body of the loop_start() thread
            self.network_thread = threading.current_thread()
            error: Optional[BaseException] = None
            try:
                super()._thread_main()
            except BaseException as exc:  # noqa: B036 (reported instead of a bare traceback)
                error = exc
            hook = self.on_network_exit
            if hook is not None:
                hook(self, error)
            elif error is not None:
                raise error
    return paho, Client


def discard(client) -> None:
    """Let go of a client whose network thread has died: no more callbacks, sockets closed (the
    broker then sends the last will)."""
    for name in ("connect", "connect_fail", "disconnect", "publish", "subscribe", "message",
                 "log"):
        setattr(client, f"on_{name}", None)
    client.on_network_exit = None
    reset = getattr(client, "_reset_sockets", None)  # paho 2.x: the socket and the socketpair
    try:
        if reset is not None:
            reset()
        elif client.socket() is not None:
            client.socket().close()
    except OSError:
        pass


def describe_connect_error(exc: Optional[BaseException]) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on that port?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    return (exc.strerror or str(exc) or type(exc).__name__) if exc else "unknown error"
