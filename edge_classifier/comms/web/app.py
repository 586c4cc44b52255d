"""The aiohttp application: the guard, the page, the live streams.

::

    app = make_app(transport)        # what WebTransport serves; routes:

    GET  /                     the studio page (static/index.html)     /login: the login page
    GET  /static/<file>        its CSS and JavaScript (a fixed list of files of the package)
    GET  /api/events           Server-Sent Events: status and the inbox at once, then
                               prediction (<= 5/s, the newest), catalogue, inbox, stats
                               (every 2 s), state, upload (progress)
    GET  /api/stream.mjpeg     the camera's frames, multipart JPEG, sent with the predictions
                               (at most 5/s and web.stream_fps), encoded once for all watchers,
                               off the device loop's thread, only while someone watches
    GET  /api/snapshot.jpg     the current frame
    ...                        the JSON API: :mod:`~edge_classifier.comms.web.api`

Every response carries a strict Content-Security-Policy (no inline script, nothing from
elsewhere), so even a class name that slipped into the page as markup could not run.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any, Dict

from PIL import Image

from edge_classifier.comms.web import api, fleet_view
from edge_classifier.comms.web.aio import web
from edge_classifier.comms.web.security import HEADERS, SESSION_COOKIE
from edge_classifier.comms.web.studio import ReadStats

STATIC = Path(__file__).with_name("static")
TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript",
         ".svg": "image/svg+xml", ".png": "image/png"}
PUBLIC = ("/login", "/static/", "/api/login", "/favicon.ico")
STATS_SECONDS = 2.0
KEEPALIVE_SECONDS = 15.0


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status,
                             headers={"Cache-Control": "no-store"})


def make_app(transport) -> web.Application:
    guard = transport.guard

    @web.middleware
    async def protect(request: web.Request, handler):
        transport.counts["web_requests"] += 1
        problem = guard.host_problem(request.host)
        if problem is None:
            problem = guard.origin_problem(request.method, request.host,
                                           request.headers.get("Origin"),
                                           request.headers.get("Sec-Fetch-Site"))
        if problem is not None:
            response = _error(403, problem)
        elif not (request.path.startswith(PUBLIC) or guard.authenticated(
                request.cookies.get(SESSION_COOKIE), request.headers.get("Authorization"))):
            if request.path.startswith("/api/"):
                response = _error(401, "log in first: send the studio's password as HTTP Basic "
                                       "or Bearer credentials, or log in on the page")
                response.headers["WWW-Authenticate"] = 'Bearer realm="edge-classifier"'
            else:
                response = web.Response(status=303, headers={"Location": "/login"})
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # raised by a handler or the router
                response = _error(exc.status, exc.reason) if exc.status >= 400 else \
                    web.Response(status=exc.status, headers=exc.headers)
            except Exception:  # noqa: BLE001 - one bad request must not stop the studio
                transport.counts["web_errors"] += 1
                api.log.exception("%s %s failed", request.method, request.path)
                response = _error(500, "internal error (see the device's log)")
        if not response.prepared:
            response.headers.update(HEADERS)
        return response

    app = web.Application(middlewares=[protect], client_max_size=transport.limits.bytes + 65536)
    files = {p.name: p for p in STATIC.iterdir() if p.suffix in TYPES} if STATIC.is_dir() else {}

    def page(name: str):
        async def handler(request: web.Request) -> web.Response:
            return _static(files, name)
        return handler

    async def static(request: web.Request) -> web.Response:
        return _static(files, request.match_info["name"])

    app.router.add_get("/", page("index.html"))
    app.router.add_get("/login", page("login.html"))
    app.router.add_get("/static/{name}", static)
    bind = api.binder(transport)
    app.router.add_get("/api/events", bind(events))
    app.router.add_get("/api/stream.mjpeg", bind(mjpeg))
    app.router.add_get("/api/snapshot.jpg", bind(snapshot))
    api.add_routes(app, transport)
    fleet_view.add_routes(app, transport)
    return app


def _static(files: Dict[str, Path], name: str) -> web.Response:
    path = files.get(name)  # a fixed list: nothing from the request names a path
    if path is None:
        raise web.HTTPNotFound()
    return web.Response(body=path.read_bytes(), content_type=TYPES[path.suffix],
                        charset="utf-8" if path.suffix != ".png" else None,
                        headers={"Cache-Control": "no-cache"})


# -- live streams ----------------------------------------------------------------------------
def _event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")


async def events(request: web.Request, transport) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no", **HEADERS})
    await response.prepare(request)
    transport.counts["web_clients"] += 1
    poller = transport.__dict__.get("_poller")
    if poller is None or poller.done():
        transport._poller = asyncio.ensure_future(_poll_stats(transport))
    seen = dict(transport.versions)
    try:
        await response.write(_event("status", api.status(transport)))
        if transport.inbox is not None:  # in the stream, so no later answer can be older
            await response.write(_event("inbox", api.inbox_list(transport)))
        while not transport.closing.is_set():
            changed = transport.changed
            for kind, version in list(transport.versions.items()):
                if version == seen[kind]:
                    continue
                seen[kind] = version
                if kind == "prediction":  # coalesced by transport.notify
                    payload = transport.prediction
                elif kind == "upload":
                    payload = transport.upload_progress()
                elif kind == "catalogue":
                    payload = {"classes": transport.catalogue["classes"]}
                elif kind == "inbox":
                    payload = api.inbox_list(transport)
                elif kind == "stats":
                    payload = dict(transport.device_stats, web=transport.stats)
                else:
                    payload = {"state": transport.state}
                await response.write(_event(kind, payload))
            try:
                await asyncio.wait_for(changed.wait(), KEEPALIVE_SECONDS)
            except asyncio.TimeoutError:
                await response.write(b": keep-alive\n\n")
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        transport.counts["web_clients"] -= 1
    return response


async def _poll_stats(transport) -> None:
    """While a page watches: the device's counters every STATS_SECONDS."""
    while transport.counts["web_clients"] > 0 and not transport.closing.is_set():
        answer = await transport.ask(ReadStats(origin="web", request_id=transport.new_id()),
                                     timeout=10)
        if answer.get("ok"):
            transport.device_stats = answer["stats"]
            transport.notify("stats")
        try:
            await asyncio.wait_for(transport.closing.wait(), STATS_SECONDS)
        except asyncio.TimeoutError:
            pass


def encode_jpeg(frame, quality: int = 80) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, "JPEG", quality=quality)
    return out.getvalue()


async def current_jpeg(transport):
    """(frame number, JPEG) of the newest frame, encoded once however many watch."""
    cache = transport.__dict__.setdefault("_jpeg", {"no": -1, "jpeg": None,
                                                    "lock": asyncio.Lock()})
    no, frame = transport.frame_no, transport.frame
    if frame is not None and no != cache["no"]:
        async with cache["lock"]:
            if no != cache["no"]:
                loop = asyncio.get_running_loop()
                cache["jpeg"] = await loop.run_in_executor(None, encode_jpeg, frame)
                cache["no"] = no
    return cache["no"], cache["jpeg"]


async def mjpeg(request: web.Request, transport) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "multipart/x-mixed-replace; boundary=frame",
        "Cache-Control": "no-store", **HEADERS})
    await response.prepare(request)
    transport.counts["web_clients"] += 1
    gap = 0.9 / transport.config.web.stream_fps  # slack: live updates come at a jittery pace
    sent, sent_at, live = -1, -1e9, -1
    loop = asyncio.get_running_loop()
    try:
        while not transport.closing.is_set():
            changed = transport.changed
            # A frame goes out with a live update (the first one at once), when the gap allows.
            if transport.versions["prediction"] != live and loop.time() - sent_at >= gap:
                live = transport.versions["prediction"]
                no, jpeg = await current_jpeg(transport)
                if jpeg is not None and no != sent:
                    sent, sent_at = no, loop.time()
                    await response.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: " + str(len(jpeg)).encode()
                                         + b"\r\n\r\n" + jpeg + b"\r\n")
            try:
                await asyncio.wait_for(changed.wait(), KEEPALIVE_SECONDS)
            except asyncio.TimeoutError:
                pass
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        transport.counts["web_clients"] -= 1
    return response


async def snapshot(request: web.Request, transport) -> web.Response:
    _, jpeg = await current_jpeg(transport)
    if jpeg is None:
        return _error(404, "no frame yet")
    return web.Response(body=jpeg, content_type="image/jpeg",
                        headers={"Cache-Control": "no-store"})
