"""A small threaded TCP proxy on 127.0.0.1 for network-fault tests: put it between a client and
a broker, then stall the link (Wi-Fi gone without a FIN), resume it, or cut every connection::

    from tcp_proxy import TcpProxy

    with TcpProxy(broker.port) as proxy:       # listens on proxy.port, forwards to broker.port
        config = mqtt_config(None, broker=proxy.url)
        ...
        proxy.stall()    # sockets stay open, nothing is forwarded either way
        proxy.resume()   # forwarding again (see resume() for connections given up meanwhile)
        proxy.cut()      # close every connection at once (both ends see it)
        proxy.inject(b"\xe0\x01\x8e")   # bytes to every client as from the broker, then cut

Every thread is a daemon, polls a flag at least every 0.1 s and ends by itself once its
connection or the proxy is closed; :meth:`TcpProxy.close` (also at the end of a ``with``) joins
them. A proxy nobody closes closes itself after ``lifetime`` seconds (default 600).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import List, Optional, Set

HOST = "127.0.0.1"
POLL = 0.1  # seconds between checks of the stop flags
JOIN_TIMEOUT = 5.0
_GONE = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR | select.POLLNVAL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class _Link:
    """One proxied connection: the client's socket, the broker's socket, two pump threads."""

    def __init__(self, proxy: "TcpProxy", client: socket.socket, upstream: socket.socket):
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.closed = False
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._pump, args=(a, b), daemon=True,
                                         name=f"tcp-proxy-{proxy.port}-{name}")
                        for a, b, name in ((client, upstream, "up"), (upstream, client, "down"))]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _pump(self, source: socket.socket, dest: socket.socket) -> None:
        try:
            while not self.closed:
                readable, _, _ = select.select([source], [], [], POLL)
                if readable and not self.closed and self.proxy._begin_forwarding():
                    try:  # not stalled: forward one chunk (or the end of the stream)
                        data = source.recv(65536)
                        if data:
                            dest.sendall(data)
                    finally:
                        self.proxy._end_forwarding()
                    if not data:
                        break
        except (OSError, ValueError):  # the other pump or cut() closed a socket
            pass
        self.close()

    def given_up(self) -> bool:
        """True when either end closed (or reset) its socket, e.g. while the link was stalled."""
        poller = select.poll()
        try:
            for sock in (self.client, self.upstream):
                poller.register(sock, _GONE)
        except (OSError, ValueError):
            return True
        return bool(poller.poll(0))

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a pump waiting in select()
            except OSError:
                pass
            sock.close()
        self.proxy._forget(self)


class TcpProxy:
    """Forwards connections on ``127.0.0.1:port`` (a free one by default) to
    ``target_host:target_port``. ``accepted`` counts the connections accepted so far.

    ``listen=False`` reserves the port without listening yet (a client connecting meanwhile is
    refused, as by an absent broker); :meth:`start` begins listening.
    """

    def __init__(self, target_port: int, target_host: str = HOST, port: Optional[int] = None,
                 listen: bool = True, lifetime: float = 600.0):
        self.target = (target_host, target_port)
        self._deadline = time.monotonic() + lifetime
        self.port = port or _free_port()
        self.accepted = 0
        self._cond = threading.Condition()
        self._stalled = False
        self._closed = False
        self._busy = 0  # pumps forwarding a chunk right now
        self._links: Set[_Link] = set()
        self._listener: Optional[socket.socket] = None
        self._acceptor: Optional[threading.Thread] = None
        self._threads: List[threading.Thread] = []
        if listen:
            self.start()

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @property
    def stalled(self) -> bool:
        return self._stalled

    @property
    def open_connections(self) -> int:
        with self._cond:
            return len(self._links)

    # --- control ----------------------------------------------------------------------------
    def start(self) -> "TcpProxy":
        """Listen and accept connections (a no-op when already listening)."""
        with self._cond:
            if self._listener is not None or self._closed:
                return self
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, self.port))
            listener.listen(16)
            listener.settimeout(POLL)
            self._listener = listener
            self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                              name=f"tcp-proxy-{self.port}-accept")
        self._acceptor.start()
        return self

    def stall(self) -> None:
        """Stop forwarding in both directions; every socket stays open, and connections accepted
        while stalled are held the same way. Like a Wi-Fi link dropping without a FIN."""
        with self._cond:
            self._stalled = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._busy == 0, JOIN_TIMEOUT)  # a chunk in flight

    def resume(self) -> None:
        """Forward again. A connection that one end gave up on during the stall (closed or reset
        its socket) is closed at both ends, without delivering what waited, as the peer's reset
        would once packets flow again; the others carry on with what waited in their buffers."""
        with self._cond:
            links = list(self._links)
        for link in links:
            if link.given_up():
                link.close()
        with self._cond:
            self._stalled = False
            self._cond.notify_all()

    def cut(self) -> int:
        """Close every current connection at both ends (the proxy keeps listening); returns how
        many were closed."""
        with self._cond:
            links = list(self._links)
        for link in links:
            link.close()
        return len(links)

    def inject(self, data: bytes, cut: bool = True) -> int:
        """Send ``data`` to every connected client as if the broker had sent it, between two
        forwarded chunks (never inside one), then (``cut``) close those connections; returns how
        many clients got it. E.g. an MQTT 5 DISCONNECT "Session taken over":
        ``b"\\xe0\\x01\\x8e"``."""
        with self._cond:
            was_stalled, self._stalled = self._stalled, True
            self._cond.wait_for(lambda: self._busy == 0, JOIN_TIMEOUT)  # a chunk in flight
            links = list(self._links)
            for link in links:
                try:
                    link.client.sendall(data)
                except OSError:
                    pass
            self._stalled = was_stalled
            self._cond.notify_all()
        if cut:
            for link in links:
                link.close()
        return len(links)

    def close(self) -> None:
        """Stop listening, close every connection and wait for the threads; safe to call twice."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.cut()
        for thread in [self._acceptor, *self._threads]:
            if thread is not None and thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- threads ----------------------------------------------------------------------------
    def _begin_forwarding(self) -> bool:
        """True (counted as busy until :meth:`_end_forwarding`) when a pump may forward now;
        while stalled, waits up to POLL seconds and returns False: the data stays unread, so
        nothing, not even a FIN, gets through."""
        with self._cond:
            if self._stalled and not self._closed:
                self._cond.wait(POLL)
                return False
            self._busy += 1
            return True

    def _end_forwarding(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def _accept_loop(self) -> None:
        while not self._closed:
            if time.monotonic() > self._deadline:
                self.close()  # forgotten: stop by itself
                break
            listener = self._listener
            if listener is None:
                break
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:  # closed by close()
                break
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=JOIN_TIMEOUT)
                upstream.settimeout(None)
            except OSError:  # the broker is down: the client sees its connection closed
                client.close()
                continue
            link = _Link(self, client, upstream)
            with self._cond:
                if self._closed:
                    link.closed = True
                    client.close()
                    upstream.close()
                    break
                self.accepted += 1
                self._links.add(link)
                self._threads = [t for t in self._threads if t.is_alive()] + link.threads
                self._cond.notify_all()
            link.start()

    def _forget(self, link: _Link) -> None:
        with self._cond:
            self._links.discard(link)
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:
        """Block until ``predicate(self)`` is true (True) or ``timeout`` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)
