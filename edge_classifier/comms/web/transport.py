"""The web studio as one more transport on the device's bus.

The device publishes to it like to MQTT (``set_classes``, ``publish_prediction``, ...), on the
loop's thread; it keeps the newest of each and serves them from its own thread, where an
aiohttp server runs on an asyncio loop (:mod:`~edge_classifier.comms.web.app`). What the page
asks for becomes an event for the loop (:meth:`WebTransport.ask`), answered through
``Bus.answer`` -> :meth:`WebTransport.publish_result`::

    web = bus.add(WebTransport(config, device.post, store=store, inbox=inbox,
                               frame=lambda: device.current_frame))
    bus.start()          # listens; logs "web studio on http://127.0.0.1:8080/"
    web.url              # the address it listens on (port 0 in the config: a free one)

The socket is bound in the constructor, so a port in use is a clear
:class:`~edge_classifier.errors.WebServerError` before the device starts. Frames the device
was unsure about are kept in the inbox (at most one per ``web.inbox_interval`` of the device's
clock), written by a worker thread so the loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import shutil
import socket
import ssl
import tempfile
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from edge_classifier.comms.commands import CommandRouter
from edge_classifier.comms.commands import result as command_result
from edge_classifier.comms.events import Event
from edge_classifier.comms.web.aio import web
from edge_classifier.comms.web.app import make_app
from edge_classifier.comms.web.camera import BrowserSource
from edge_classifier.comms.web.jobs import UploadQueue
from edge_classifier.comms.web.limits import CaptureLimit
from edge_classifier.comms.web.security import Guard
from edge_classifier.comms.web.uploads import Limits
from edge_classifier.config import is_loopback, parse_listen
from edge_classifier.core.clock import SYSTEM_CLOCK
from edge_classifier.errors import PublisherClosedError, StoreError, WebServerError

log = logging.getLogger("edge_classifier.comms.web")
ANSWER_SECONDS = 30.0  # the longest a request waits for the loop (an import of many files)
RECENT = 8  # thumbnails per class card
KINDS = ("prediction", "catalogue", "inbox", "stats", "state", "upload")
#: Live updates sent to the pages (or ``web.stream_fps`` when higher): the newest prediction,
#: and the live view's frame with it (when ``web.stream_fps`` allows), so the browser draws
#: both in one go.
LIVE_PER_SECOND = 5.0


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WebServerError(f"web.listen: cannot resolve {host!r} ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("::", "::0"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise WebServerError(f"web.listen: cannot listen on {host} port {port} "
                             f"({exc.strerror or exc})") from None
    return sock


class WebTransport:
    """The publisher interface for the web page; see the module docstring.

    :param post: queues an event for the device loop (``Device.post``).
    :param store: the device's sample store, read on the loop's thread only (in
        ``set_classes`` and ``publish_result``) to keep the catalogue the page shows.
    :param frame: returns the frame of the prediction being published (the live view).
    """

    name = "web"

    def __init__(self, config, post: Callable[[Event], Any], *, store, inbox=None,
                 frame: Optional[Callable[[], Any]] = None, clock=None):
        self.config = config
        w = config.web
        self.host, port = parse_listen(w.listen)
        self.ssl_context = None
        if w.cert:
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                self.ssl_context.load_cert_chain(w.cert, w.key or None)
            except (OSError, ssl.SSLError) as exc:  # checked at load; changed since
                raise WebServerError(f"web.cert: cannot load {w.cert} ({exc})") from None
        self.guard = Guard(w, tls=self.ssl_context is not None)
        self.limits = Limits.of(w)
        self.post = post
        self.router = CommandRouter(post, max_payload=64 * 1024)
        self.store = store
        self.inbox = inbox
        self.clock = clock or SYSTEM_CLOCK
        self._frame_of = frame or (lambda: None)
        self.camera: Optional[BrowserSource] = None
        self._sock = _bind(self.host, port)
        self.port = self._sock.getsockname()[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if self.ssl_context else 'http'}://{shown}:{self.port}/"
        self.staging = tempfile.mkdtemp(prefix="edge-classifier-web-")
        # What the loop published last; replaced whole (never changed in place), so the
        # server thread may read it at any time.
        self.catalogue: Dict[str, Any] = {"classes": []}
        self.thumbs: Dict[tuple, str] = {}
        self.prediction: Optional[Dict[str, Any]] = None
        self.frame: Any = None
        self.frame_no = 0
        self.state: Optional[str] = None
        self.device_stats: Dict[str, Any] = {}
        self.snapshot: Optional[bytes] = None
        self.versions = dict.fromkeys(KINDS, 0)  # changed on the server's loop only
        self.counts = dict(web_requests=0, web_errors=0, web_clients=0, inbox_kept=0)
        self._bound = {c.name for c in config.classes}
        self._last_kept: Optional[float] = None
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="web-inbox")
        self._ids = itertools.count(1)
        self._pending: Dict[str, asyncio.Future] = {}
        self._wake_pending = False  # a live update is on its way to the server's loop
        self._next_live = 0.0  # the server loop's time of the next live update
        self._aloop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner = None
        self._stopped = self._started = False
        self.closing: Optional[asyncio.Event] = None
        self.changed: Optional[asyncio.Event] = None
        self.capture_limit = CaptureLimit(config.gpio.hold_rate, self.clock.now)
        self.uploads = UploadQueue(post, self.new_id, lambda: self._aloop,
                                   lambda: self._wake("upload"))
        self._refresh()

    # -- the frame source ----------------------------------------------------------------------
    def browser_source(self, fallback=None) -> BrowserSource:
        """The source the browser's camera feeds (``fallback``: the device's own, read while
        no browser streams)."""
        self.camera = BrowserSource(fallback, idle=self.uploads.on_frame)
        return self.camera

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "WebTransport":
        if self._stopped:
            raise PublisherClosedError("the web studio was stopped; make a new one")
        if self._started:
            return self
        self._started = True
        ready, failure = threading.Event(), []
        self._aloop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(make_app, ready, failure),
                                        name="edge-classifier-web", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise WebServerError(f"the web studio did not start ({failure[0]})")
        where = "" if is_loopback(self.host) else " (reachable from the network)"
        log.info("web studio on %s%s", self.url, where)
        return self

    def _serve(self, make_app, ready: threading.Event, failure: list) -> None:
        loop = self._aloop
        asyncio.set_event_loop(loop)
        try:
            self.closing, self.changed = asyncio.Event(), asyncio.Event()
            self._runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=2.0,
                                         handle_signals=False)
            loop.run_until_complete(self._runner.setup())
            site = web.SockSite(self._runner, self._sock, ssl_context=self.ssl_context)
            loop.run_until_complete(site.start())
        except Exception as exc:  # noqa: BLE001 - reported by start()
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        """Close every stream, stop serving; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        loop, thread = self._aloop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(self._begin_closing)
            thread.join(15)
        self._writer.shutdown(wait=True)
        if self.camera is not None:
            self.camera.close()
        with_sock, self._sock = self._sock, None
        if with_sock is not None:
            with_sock.close()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _begin_closing(self) -> None:
        self.uploads.cancel_all("the device is stopping")
        self.closing.set()
        self.changed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_result(command_result("?", False, "the device is stopping"))
        self._aloop.call_later(0.05, self._aloop.stop)

    def close(self) -> None:
        self.stop()

    @property
    def stats(self) -> Dict[str, Any]:
        own = dict(self.counts, inbox=len(self.inbox) if self.inbox is not None else 0)
        if self.camera is not None:
            own["camera_frames"] = self.camera.fed
        return own

    # -- the publisher interface (the loop's thread) -------------------------------------------
    def set_classes(self, names) -> None:
        self._refresh()
        self._wake("catalogue")

    def publish_state(self, label: str) -> None:
        self.state = label
        self._wake("state")

    def publish_prediction(self, payload: Dict[str, Any]) -> None:
        self.frame = self._frame_of()
        self.prediction = payload
        self.frame_no += 1
        self.uploads.on_frame()  # at most one uploaded picture per frame
        self._keep_if_unsure(payload)
        if self.counts["web_clients"] and not self._wake_pending:
            self._wake_pending = True
            self._wake("prediction")

    def publish_stats(self, payload: Dict[str, Any]) -> None:
        self.device_stats = dict(payload)
        self._wake("stats")

    def publish_snapshot(self, jpeg: bytes) -> None:
        self.snapshot = bytes(jpeg)

    def publish_result(self, result: Dict[str, Any]) -> None:
        if self.uploads.on_result(result):  # one picture of an upload (the catalogue follows)
            return
        self._refresh()
        loop = self._aloop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._resolve, result)

    def upload_progress(self) -> Dict[str, Any]:
        """The uploads being imported: ``{"uploads": [{"class", "done", "total"}]}``."""
        return self.uploads.progress()

    # -- machinery -----------------------------------------------------------------------------
    def _wake(self, kind: str) -> None:
        loop = self._aloop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.notify, kind)
            except RuntimeError:  # closed meanwhile
                pass

    def notify(self, kind: str) -> None:
        """(The server's loop) something of ``kind`` changed: wake the streams. Predictions
        are coalesced: at most LIVE_PER_SECOND updates a second (``web.stream_fps`` when
        higher), each the newest at its time."""
        if kind == "prediction":
            now = self._aloop.time()
            if now < self._next_live:
                self._aloop.call_at(self._next_live, self.notify, "prediction")
                return  # _wake_pending stays set: the loop's thread schedules nothing more
            period = 1 / max(LIVE_PER_SECOND, self.config.web.stream_fps)  # on the beat while
            # busy: no drift below the rate
            self._next_live = (self._next_live if now - self._next_live < period else now) + period
            self._wake_pending = False
        self.versions[kind] += 1
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def _refresh(self) -> None:
        """The catalogue: classes, counts and recent samples (the loop's thread)."""
        store, classes, thumbs = self.store, [], {}
        for name, count in store.counts().items():
            recent = store.sample_ids(name)[-RECENT:][::-1]
            for sid in recent:
                path = self.thumbs.get((name, sid))
                if path is None:
                    found = store.thumbnail_path(name, sid)
                    path = str(found) if found is not None else ""
                thumbs[(name, sid)] = path
            classes.append({"name": name, "samples": count, "bound": name in self._bound,
                            "recent": [sid for sid in recent if thumbs[(name, sid)]]})
        self.thumbs = thumbs
        self.catalogue = {"classes": classes}

    def _keep_if_unsure(self, payload: Dict[str, Any]) -> None:
        inbox = self.inbox
        if inbox is None or inbox.limit <= 0 or not payload.get("scores"):
            return
        unsure = payload.get("unknown") or \
            float(payload.get("confidence") or 0) < self.config.smoothing.threshold
        now = self.clock.now()
        if not unsure or (self._last_kept is not None
                          and now - self._last_kept < self.config.web.inbox_interval):
            return
        frame = self.frame
        if frame is None:
            return
        self._last_kept = now
        meta = {k: payload.get(k) for k in ("label", "closest", "confidence", "unknown",
                                            "unknown_score")}
        try:
            self._writer.submit(self._keep, frame, meta)
        except RuntimeError:  # shutting down
            pass

    def _keep(self, frame, meta) -> None:
        try:
            self.inbox.add(frame, meta)
        except StoreError as exc:
            log.warning("inbox: %s", exc)
            return
        self.counts["inbox_kept"] += 1
        self._wake("inbox")

    def _resolve(self, result: Dict[str, Any]) -> None:
        future = self._pending.pop(str(result.get("id")), None)
        if future is not None and not future.done():
            future.set_result(result)
        self.notify("catalogue")
        if result.get("action") in ("file_inbox", "discard_inbox"):
            self.notify("inbox")

    # -- asking the loop (the server's loop) ---------------------------------------------------
    def new_id(self) -> str:
        return f"web-{next(self._ids)}"

    async def ask(self, event: Event, timeout: float = ANSWER_SECONDS) -> Dict[str, Any]:
        """Post ``event`` (its request_id from :meth:`new_id`) and wait for the loop's answer."""
        future = self._expect(event.request_id)
        try:
            self.post(event)
        except Exception as exc:  # noqa: BLE001
            self._pending.pop(event.request_id, None)
            return command_result(getattr(event, "ACTION", "?"), False,
                                  f"the device could not take the request ({exc})",
                                  event.request_id)
        return await self._wait(future, event.request_id, getattr(event, "ACTION", "?"), timeout)

    async def command(self, action: str, fields: Dict[str, Any],
                      timeout: float = ANSWER_SECONDS) -> Tuple[Dict[str, Any], bool]:
        """Run a JSON command (:mod:`~edge_classifier.comms.commands`) through the router, as
        MQTT does, and wait for its result: (result, True if it was refused unparsed)."""
        rid = self.new_id()
        future = self._expect(rid)
        body = json.dumps(dict(fields, id=rid)).encode("utf-8")
        try:
            answer = self.router.handle(self.name, action, body)
        except Exception as exc:  # noqa: BLE001 - CommandQueueError: the queue raised
            answer = command_result(action, False, str(exc), rid)
        if answer is not None:  # refused at once
            self._pending.pop(rid, None)
            return answer, True
        return await self._wait(future, rid, action, timeout), False

    def _expect(self, rid: Optional[str]) -> asyncio.Future:
        if not rid:
            raise ValueError("a web request needs a request id (new_id())")
        future = self._aloop.create_future()
        self._pending[rid] = future
        return future

    async def _wait(self, future, rid, action, timeout) -> Dict[str, Any]:
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return command_result(action, False, f"the device did not answer within "
                                  f"{timeout:g} s (is it getting frames?)", rid, timeout=True)
        finally:
            self._pending.pop(rid, None)
