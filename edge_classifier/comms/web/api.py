"""The JSON API the page uses (and curl, Node-RED, scripts: the same requests)::

    GET    /api/status                          classes {name: count}, prediction, state, stats
    POST   /api/predict                         multipart "image": the label of that picture
    POST   /api/classes                         {"class": name}: a new, empty class
    POST   /api/classes/{name}/capture          {"count": n = 1}: samples from the next frames
    POST   /api/classes/{name}/samples          multipart "images": import pictures (one per
                                                frame; progress on /api/events as "upload")
    GET    /api/classes/{name}/samples/{id}.jpg a sample's thumbnail (recent ones)
    DELETE /api/classes/{name}/samples/{id}     delete one sample
    POST   /api/classes/{name}/rename           {"to": new name}
    POST   /api/classes/{name}/clear            delete its samples, keep the class
    DELETE /api/classes/{name}                  delete the class
    GET    /api/inbox                           unsure frames: [{"id", "label", ...}]
    GET    /api/inbox/{id}.png                  one of them
    POST   /api/inbox/{id}/file                 {"class": name}: it becomes a sample
    DELETE /api/inbox/{id}                      discard it
    GET    /api/insight                         confusion matrix of the samples (leave-one-out)
    GET    /api/export.zip                      the samples as class folders (what train reads)
    POST   /api/camera/frame                    a JPEG from the browser's camera
    POST   /api/login, /api/logout              {"password"}: the page's session cookie

Answers are JSON: a command's result ``{"ok", "action", "error"?, ...}`` with HTTP 200 when it
worked, 400 for a malformed request, 409 when the device refused it, 504 when the device did
not answer in time, 429 (with Retry-After) past a limit of :mod:`~edge_classifier.comms.web.limits`
(captures per class and second, uploads waiting); 401/403 come from the guard (:mod:`~edge_classifier.comms.web.security`).
Class names in paths are percent-encoded; they are checked like every class name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import tempfile
import zipfile
from typing import Any, Dict

from edge_classifier.comms.commands import MAX_COUNT
from edge_classifier.comms.commands import result as command_result
from edge_classifier.comms.web.aio import web
from edge_classifier.comms.web.limits import MAX_WAITING_UPLOADS
from edge_classifier.comms.web.security import HEADERS, SESSION_COOKIE
from edge_classifier.comms.web.studio import ListExport, PredictImage, ReadInsight, finish
from edge_classifier.comms.web.uploads import decode, read_files, stage
from edge_classifier.core.names import validate_class_name
from edge_classifier.errors import ClassNameError, InboxItemNotFoundError, UploadError

log = logging.getLogger("edge_classifier.comms.web")
SID = "{sid:[0-9a-f]{20}}"
ITEM = "{item:[0-9a-f]{20}}"
CAMERA_SIDE = 640  # browser frames are decoded at most this large


def binder(t):
    """``bind(handler)``: an aiohttp handler calling ``handler(request, t)``."""
    def bind(handler):
        async def bound(request: web.Request):
            return await handler(request, t)
        return bound
    return bind


def add_routes(app: web.Application, t) -> None:
    bind = binder(t)
    r = app.router
    r.add_post("/api/login", bind(login))
    r.add_post("/api/logout", bind(logout))
    r.add_get("/api/status", bind(get_status))
    r.add_post("/api/predict", bind(predict))
    r.add_post("/api/classes", bind(add_class))
    r.add_post("/api/classes/{name}/capture", bind(capture))
    r.add_post("/api/classes/{name}/samples", bind(upload))
    r.add_get(f"/api/classes/{{name}}/samples/{SID}.jpg", bind(thumbnail))
    r.add_delete(f"/api/classes/{{name}}/samples/{SID}", bind(delete_sample))
    r.add_post("/api/classes/{name}/rename", bind(rename))
    r.add_post("/api/classes/{name}/clear", bind(clear))
    r.add_delete("/api/classes/{name}", bind(delete_class))
    r.add_get("/api/inbox", bind(inbox))
    r.add_get(f"/api/inbox/{ITEM}.png", bind(inbox_image))
    r.add_post(f"/api/inbox/{ITEM}/file", bind(file_inbox))
    r.add_delete(f"/api/inbox/{ITEM}", bind(discard_inbox))
    r.add_get("/api/insight", bind(insight))
    r.add_get("/api/export.zip", bind(export))
    r.add_post("/api/camera/frame", bind(camera_frame))


# -- helpers -----------------------------------------------------------------------------------
def reply(result: Dict[str, Any], immediate: bool = False) -> web.Response:
    status = 200 if result.get("ok") else 504 if result.get("timeout") else \
        400 if immediate else 409
    return web.json_response(result, status=status, headers={"Cache-Control": "no-store"},
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


def bad(action: str, message: str) -> web.Response:
    return reply(command_result(action, False, message), immediate=True)


async def body(request: web.Request) -> Dict[str, Any]:
    """The request's JSON object ({} when empty); UploadError if it is not one."""
    text = await request.text()
    if not text.strip():
        return {}
    try:
        fields = json.loads(text)
    except ValueError:
        raise UploadError("the request body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise UploadError("the request body must be a JSON object")
    return fields


async def run_command(t, action: str, fields: Dict[str, Any]) -> web.Response:
    result, immediate = await t.command(action, fields)
    return reply(result, immediate)


def _name(request: web.Request) -> str:
    return request.match_info["name"]


def status(transport) -> Dict[str, Any]:
    """Everything the page shows, as of now (also ``GET /api/status``)."""
    catalogue = transport.catalogue
    config = transport.config
    camera = transport.camera
    return {
        "device": config.device_id, "url": transport.url,
        "classes": {c["name"]: c["samples"] for c in catalogue["classes"]},
        "catalogue": catalogue["classes"], "prediction": transport.prediction,
        "state": transport.state, "stats": transport.device_stats,
        "inbox": len(transport.inbox) if transport.inbox is not None else None,
        "uploads": transport.upload_progress()["uploads"],
        "camera": {"source": config.source.kind,
                   "streaming": bool(camera and camera.streaming),
                   "accepts": camera is not None},
        "settings": {"hold_rate": config.gpio.hold_rate,
                     "threshold": config.smoothing.threshold,
                     "stream_fps": config.web.stream_fps,
                     "max_upload_files": config.web.max_upload_files,
                     "max_upload_bytes": config.web.max_upload_bytes},
        "login": transport.guard.required}


# -- session -----------------------------------------------------------------------------------
async def login(request: web.Request, t) -> web.Response:
    guard = t.guard
    if not guard.required:
        return web.json_response({"ok": True, "login": False})
    try:
        password = (await body(request)).get("password")
    except UploadError as exc:
        return bad("login", str(exc))
    if guard.locked_out():
        return web.json_response({"ok": False, "error": "too many wrong passwords; wait a "
                                  "minute"}, status=429)
    token = guard.login(password if isinstance(password, str) else None)
    if token is None:
        return web.json_response({"ok": False, "error": "wrong password"}, status=401)
    response = web.json_response({"ok": True, "login": True})
    response.set_cookie(SESSION_COOKIE, token, **guard.cookie_flags())
    return response


async def logout(request: web.Request, t) -> web.Response:
    t.guard.logout(request.cookies.get(SESSION_COOKIE))
    response = web.json_response({"ok": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def get_status(request: web.Request, t) -> web.Response:
    return web.json_response(status(t), headers={"Cache-Control": "no-store"},
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


# -- classes and samples -----------------------------------------------------------------------
async def add_class(request: web.Request, t) -> web.Response:
    try:
        fields = await body(request)
    except UploadError as exc:
        return bad("add_class", str(exc))
    return await run_command(t, "add_class", {"class": fields.get("class")})


async def capture(request: web.Request, t) -> web.Response:
    try:
        fields = await body(request)
        name = validate_class_name(_name(request))
    except (ClassNameError, UploadError) as exc:
        return bad("capture", str(exc))
    count = fields.get("count", 1)
    count = count if isinstance(count, int) and not isinstance(count, bool) and \
        1 <= count <= MAX_COUNT else 1  # a bad count is refused by the command, unlimited
    problem = t.capture_limit.take(name, count)  # gpio.hold_rate a second, like a button
    if problem is not None:
        return too_many("capture", problem, t.capture_limit.retry_after(name, count))
    return await run_command(t, "capture", dict(fields, **{"class": _name(request)}))


def too_many(action: str, message: str, wait: float) -> web.Response:
    return web.json_response(command_result(action, False, message), status=429,
                             headers={"Cache-Control": "no-store",
                                      "Retry-After": str(max(1, math.ceil(wait)))},
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def rename(request: web.Request, t) -> web.Response:
    try:
        fields = await body(request)
    except UploadError as exc:
        return bad("rename_class", str(exc))
    return await run_command(t, "rename_class", {"class": _name(request), "to": fields.get("to")})


async def clear(request: web.Request, t) -> web.Response:
    return await run_command(t, "clear_class", {"class": _name(request)})


async def delete_class(request: web.Request, t) -> web.Response:
    return await run_command(t, "delete_class", {"class": _name(request)})


async def delete_sample(request: web.Request, t) -> web.Response:
    return await run_command(t, "delete_sample", {"class": _name(request),
                                                  "sample": request.match_info["sid"]})


async def thumbnail(request: web.Request, t) -> web.StreamResponse:
    path = t.thumbs.get((_name(request), request.match_info["sid"]))  # our own paths only
    if not path or not os.path.isfile(path):
        raise web.HTTPNotFound(reason="no such sample (only the recent ones are served)")
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=86400",
                                           "Content-Type": "image/jpeg"})


async def upload(request: web.Request, t) -> web.Response:
    if t.uploads.waiting() >= MAX_WAITING_UPLOADS:
        return too_many("import", f"{MAX_WAITING_UPLOADS} uploads are already waiting to be "
                        "imported; send this one when they are done", 5)
    try:
        name = validate_class_name(_name(request))
        files, problems = await read_files(request, "images", t.limits)
    except (ClassNameError, UploadError) as exc:
        return bad("import", str(exc))
    loop = asyncio.get_running_loop()
    folder, staged, unusable = await loop.run_in_executor(None, stage, files, t.limits,
                                                          t.staging)
    problems += unusable
    if not staged:
        os.rmdir(folder)
        return reply(command_result("import", False, "no picture could be read", None,
                                    **{"class": name, "added": 0, "failed": problems}))
    result = await t.uploads.run(name, staged, folder)  # one picture per frame
    result["failed"] = problems + list(result.get("failed", []))
    return reply(result)


async def predict(request: web.Request, t) -> web.Response:
    try:
        files, problems = await read_files(request, "image", t.limits, max_files=1)
        if problems:
            raise UploadError(problems[0])
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(None, decode, files[0].data, files[0].name, t.limits)
    except UploadError as exc:
        return bad("predict", str(exc))
    return reply(await t.ask(PredictImage(origin=t.name, request_id=t.new_id(), image=image)))


# -- the inbox ---------------------------------------------------------------------------------
def inbox_list(t) -> Dict[str, Any]:
    if t.inbox is None:
        return {"items": [], "size": 0, "limit": 0}
    items = [dict(i.meta, id=i.id) for i in t.inbox.items()]
    return {"items": items, "size": len(items), "limit": t.inbox.limit}


async def inbox(request: web.Request, t) -> web.Response:
    return web.json_response(inbox_list(t), headers={"Cache-Control": "no-store"})


async def inbox_image(request: web.Request, t) -> web.StreamResponse:
    if t.inbox is None:
        raise web.HTTPNotFound(reason="there is no inbox")
    try:
        path = t.inbox.path(request.match_info["item"])
    except InboxItemNotFoundError as exc:
        raise web.HTTPNotFound(reason=str(exc)) from None
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=86400",
                                           "Content-Type": "image/png"})


async def file_inbox(request: web.Request, t) -> web.Response:
    try:
        fields = await body(request)
    except UploadError as exc:
        return bad("file_inbox", str(exc))
    return await run_command(t, "file_inbox", {"item": request.match_info["item"],
                                               "class": fields.get("class")})


async def discard_inbox(request: web.Request, t) -> web.Response:
    return await run_command(t, "discard_inbox", {"item": request.match_info["item"]})


# -- reports -----------------------------------------------------------------------------------
async def insight(request: web.Request, t) -> web.Response:
    result = await t.ask(ReadInsight(origin=t.name, request_id=t.new_id()))
    try:  # the held-out scores, off the loop's thread and off the server's own
        result = await asyncio.get_running_loop().run_in_executor(None, finish, result)
    except Exception as exc:  # noqa: BLE001  (one line for the page; the log has the rest)
        log.exception("insight failed")
        result = command_result("insight", False, f"the insight failed ({exc})")
    return reply(result)


def _write_zip(files, folder: str) -> str:
    fd, path = tempfile.mkstemp(prefix="export-", suffix=".zip", dir=folder)
    with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for name, thumb in files:
            try:
                z.write(thumb, f"{name}/{os.path.basename(thumb)}")
            except OSError:  # deleted since it was listed
                continue
    return path


async def export(request: web.Request, t) -> web.StreamResponse:
    result = await t.ask(ListExport(origin=t.name, request_id=t.new_id()))
    if not result.get("ok"):
        return reply(result)
    loop = asyncio.get_running_loop()
    path = await loop.run_in_executor(None, _write_zip, result["files"], t.staging)
    try:
        response = web.StreamResponse(headers={
            "Content-Type": "application/zip", "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="samples-{t.config.device_id}.zip"',
            "Content-Length": str(os.path.getsize(path)), **HEADERS})
        await response.prepare(request)
        with open(path, "rb") as f:
            while True:
                chunk = await loop.run_in_executor(None, f.read, 256 * 1024)
                if not chunk:
                    break
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        os.unlink(path)


# -- the browser's camera ----------------------------------------------------------------------
async def camera_frame(request: web.Request, t) -> web.Response:
    if t.camera is None:
        return bad("camera", "this device does not take frames from a browser")
    data = await request.read()
    loop = asyncio.get_running_loop()
    try:
        rgb = await loop.run_in_executor(None, decode, data, "the camera frame", t.limits,
                                         CAMERA_SIDE)
    except UploadError as exc:
        return bad("camera", str(exc))
    t.camera.feed(rgb)
    return web.json_response({"ok": True, "frames": t.camera.fed})
