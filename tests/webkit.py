"""Helpers for the web studio's tests: a device with the studio on a free port, a plain HTTP
client (what curl or Node-RED would send), photos as upload bodies."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import replace

import numpy as np
from devicekit import Running, wait_until
from PIL import Image

from edge_classifier.config import Config, GpioConfig, SmoothingConfig, WebConfig
from edge_classifier.device.loop import Device
from edge_classifier.core.clock import SYSTEM_CLOCK, FakeClock
from edge_classifier.frames.images import load_image
from edge_classifier.frames.sources import FrameSource

TIMEOUT = 60.0  # upper bound of every wait: only reached when something is broken


def web_config(**web) -> Config:
    fields = dict(listen="127.0.0.1:0", inbox_interval=5.0)
    fields.update(web)
    return Config(device_id="dev1", keyboard="off",
                  gpio=GpioConfig(pin_factory="mock", bounce_time=0.0, hold_rate=10.0),
                  smoothing=SmoothingConfig(frames=2, threshold=0.6),
                  web=WebConfig(**fields))


class Photos(FrameSource):
    """Shows one sample photo until told to show another (``show("cat.bmp")``); paced at
    ``fps`` on the real clock only to keep the machine's cores free (nothing waits on it)."""

    def __init__(self, sample, first: str, fps: float = 10.0):
        super().__init__(fps=fps, clock=SYSTEM_CLOCK)
        self._sample = sample
        self._frames = {}
        self.showing = ""
        self.show(first)

    def frame_of(self, name: str) -> np.ndarray:
        if name not in self._frames:
            self._frames[name] = load_image(self._sample(name))
        return self._frames[name]

    def show(self, name: str) -> None:
        self.frame_of(name)
        self.showing = name

    def _read(self) -> np.ndarray:
        return self.frame_of(self.showing).copy()


class Studio:
    """A running device with the web studio: ``studio.device``, ``studio.client``,
    ``studio.url``, ``studio.photos`` (the frames it sees), ``studio.clock`` (fake)."""

    def __init__(self, device_factory, sample, config=None, first="cat.bmp", teach=(),
                 password=None, source=True, backbone=None, state=None):
        self.clock = FakeClock()
        self.photos = Photos(sample, first) if source else None
        if source:
            self.device = device_factory(config or web_config(), clock=self.clock,
                                         source=self.photos)
        else:  # the device makes its own (a browser source)
            self.device = Device(config or web_config(), backbone=backbone, state_dir=state,
                                 clock=self.clock)
            self._own = self.device
        for name, photo in teach:
            self.device.learner.capture(name, self.photos.frame_of(photo))
        self.device.bus.set_classes(self.device.store.classes)
        self.url = self.device.web.url
        self.client = Client(self.url, password=password)
        self.running = Running(self.device)

    def wait(self, predicate, what="the condition"):
        assert wait_until(predicate, TIMEOUT), f"timed out waiting for {what}"

    def finish(self):
        self.running.finish()
        if getattr(self, "_own", None) is not None:
            self._own.close()


class Client:
    """JSON over HTTP with urllib: ``status, body = client.post("/api/...", {...})``."""

    def __init__(self, base: str, password=None, headers=None):
        self.base = base.rstrip("/")
        self.headers = dict(headers or {})
        if password is not None:
            token = base64.b64encode(f"script:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def request(self, method, path, data=None, headers=None, raw=False):
        body = data
        hdrs = dict(self.headers, **(headers or {}))
        if isinstance(data, (dict, list)):
            body = json.dumps(data).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(data, Multipart):
            body, hdrs["Content-Type"] = data.encode()
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                status, payload, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, payload, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        if not raw and ctype.startswith("application/json"):
            payload = json.loads(payload)
        return status, payload

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, data=b"", **kw):
        return self.request("POST", path, data, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def status(self):
        code, body = self.get("/api/status")
        assert code == 200, body
        return body


class Multipart:
    """A multipart/form-data body: ``Multipart(("images", "a.jpg", data), ...)``."""

    def __init__(self, *files):
        self.files = files

    def encode(self):
        boundary = uuid.uuid4().hex
        out = io.BytesIO()
        for field, filename, data in self.files:
            out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                      f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                      .encode())
            out.write(data)
            out.write(b"\r\n")
        out.write(f"--{boundary}--\r\n".encode())
        return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def jpeg_of(rgb: np.ndarray, size=None, quality=90) -> bytes:
    image = Image.fromarray(rgb)
    if size:
        image = image.resize(size)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def photo_bytes(sample, name: str) -> bytes:
    return jpeg_of(load_image(sample(name)))


def config_with(config: Config, **web) -> Config:
    return replace(config, web=replace(config.web, **web))



def studio_factory(device_factory, sample):
    """Fixture body: ``make(**kwargs)`` builds studios (a device with the web transport), all
    finished after the test. Register it as ``studio = pytest.fixture(studio_factory,
    name="studio")``."""
    made = []

    def make(**kwargs):
        made.append(Studio(device_factory, sample, **kwargs))
        return made[-1]
    yield make
    for s in made:
        s.finish()


__all__ = ["studio_factory", "Client", "Multipart", "Photos", "Studio", "TIMEOUT", "config_with", "jpeg_of",
           "photo_bytes", "threading", "web_config"]
