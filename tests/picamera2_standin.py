"""A stand-in for picamera2's ``Picamera2`` class: exactly the calls PicameraSource makes.

It renders a known RGB scene into the lores stream in the configured format, the way the real
camera lays it out in memory (so the tests check the colour conversion, not a copy of it):

- ``RGB888``: B,G,R bytes per pixel; ``BGR888``: R,G,B; ``XRGB8888``: B,G,R,255;
  ``XBGR8888``: R,G,B,255.
- ``YUV420``: planar I420 of shape ``(h * 3 / 2, stride)`` with ``stride`` padded to a multiple
  of 64 bytes and the padding filled with junk, encoded with BT.601 (full range for sYCC, the
  preview configuration's colour space, or limited range) and 2x2-averaged chroma.

Like the real class on a Pi 4 (``platform = "VC4"``) it refuses a non-YUV lores stream.

``camera_controls["ScalerCrop"]`` is ``(min, max, default)`` with ``max`` the sensor mode's
whole field of view (:data:`FIELD_OF_VIEW`, an IMX708's binned mode); on a Pi 5 (PiSP) there is
also ``ScalerCrops`` (one rectangle per stream, main first). ``set_controls`` refuses controls
the camera does not advertise (``RuntimeError``, as upstream's ``Controls``); a ScalerCrop set
before or while running applies to the frames that follow: the lores frame then shows that
rectangle of the scene (the scene is the whole field of view) scaled to the stream's size, each
axis on its own, as the ISP does.

Captures go through a job queue the way picamera2 1.x does it (``picamera2.py``:
``dispatch_functions``, ``process_requests``, ``stop``, ``close``, ``cancel_all_and_flush``;
``job.py``), so a stalled camera fails here as it does on a Pi::

    cam = Picamera2(stall=True)                  # the sensor delivers no frames
    cam.configure(cam.create_preview_configuration(lores={"size": (320, 240)}))
    cam.start()
    cam.capture_array("lores", wait=0.01)        # TimeoutError after 0.01 s; the job stays queued
    cam.stop()                                   # blocks for ever: its job waits behind that one
    cam.cancel_all_and_flush(); cam.stop()       # what picamera2's own tests do: returns

``wait`` is picamera2's own timeout (``Future.result(timeout=wait)``), so a test passes a tiny
one; nothing else here sleeps. While frames flow, the event loop runs in the calling thread:
every queued capture gets the next frame at once.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import CancelledError, Future
from functools import partial
from typing import Callable, List, Optional, Union

import numpy as np
from PIL import Image

Scene = Union[tuple, np.ndarray, Callable[[int, int, int], np.ndarray]]

#: The sensor mode's whole field of view, (x, y, width, height) in sensor pixels.
FIELD_OF_VIEW = (0, 0, 2304, 1296)
# The scene is rendered at this fraction of the sensor's pixels when a ScalerCrop applies.
_SENSOR_SCALE = 4

__all__ = ["CancelledError", "ColorSpace", "FIELD_OF_VIEW", "Job", "Picamera2", "Platform",
           "encode_i420",
           "failing_picamera2", "in_thread", "render"]


class ColorSpace:
    """Just the two attributes PicameraSource reads from libcamera's ColorSpace."""

    def __init__(self, name: str, range_: str, encoding: str):
        self.name = name
        self.range = f"Range.{range_}"
        self.ycbcrEncoding = f"YcbcrEncoding.{encoding}"

    def __repr__(self) -> str:
        return self.name

    @staticmethod
    def Sycc():
        return ColorSpace("sYCC", "Full", "Rec601")

    @staticmethod
    def Smpte170m():
        return ColorSpace("SMPTE170M", "Limited", "Rec601")


class Platform:
    """Mimics ``picamera2.platform.Platform`` members (only ``.name`` is read)."""

    def __init__(self, name: str):
        self.name = name


def render(scene: Scene, width: int, height: int, n: int) -> np.ndarray:
    """The HxWx3 uint8 RGB picture the camera sees for frame ``n``."""
    if callable(scene):
        rgb = np.asarray(scene(width, height, n), dtype=np.uint8)
    elif isinstance(scene, np.ndarray):
        rgb = scene.astype(np.uint8)
    else:
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        rgb[...] = np.asarray(scene, dtype=np.uint8)
    assert rgb.shape == (height, width, 3), rgb.shape
    return rgb


def encode_i420(rgb: np.ndarray, full_range: bool = True, stride: Optional[int] = None
                ) -> np.ndarray:
    """RGB -> picamera2's YUV420 array, BT.601, shape (h * 3 / 2, stride)."""
    h, w, _ = rgb.shape
    stride = stride or w
    f = rgb.astype(np.float64)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = (b - y) / 1.772
    v = (r - y) / 1.402
    if full_range:
        y, u, v = y, u + 128, v + 128
    else:
        y, u, v = 16 + y * 219 / 255, 128 + u * 224 / 255, 128 + v * 224 / 255

    def sub(c):  # 2x2 average
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    def q(c):
        return np.clip(np.rint(c), 0, 255).astype(np.uint8)

    out = np.full((h * 3 // 2, stride), 0x5A, dtype=np.uint8)  # junk in the padding
    flat = out.reshape(-1)
    planes = flat[:h * stride].reshape(h, stride)
    planes[:, :w] = q(y)
    cs = stride // 2
    for k, c in enumerate((sub(u), sub(v))):
        start = h * stride + k * (h // 2) * cs
        flat[start:start + (h // 2) * cs].reshape(h // 2, cs)[:, :w // 2] = q(c)
    return out


class Job:
    """picamera2.job.Job: functions the event loop runs, one per frame, and a Future for the
    result. ``cancel()`` only fails the Future; the job stays in the queue."""

    def __init__(self, functions, signal_function=None):
        self._functions = list(functions)
        self._future = Future()
        self._future.set_running_or_notify_cancel()
        self._signal_function = signal_function
        self._result = None
        self.calls = 0

    def execute(self) -> bool:
        """Run the functions until one is not done; True when all are (upstream's logic)."""
        try:
            while self._functions:
                done, result = self._functions[0]()
                self.calls += 1
                if not done:
                    break
                self._functions.pop(0)
            if not self._functions:
                self._result = result
        except Exception as exc:
            self._future.set_exception(exc)
            self._functions = []
        return not self._functions

    def signal(self) -> None:
        if not self._future.done():
            self._future.set_result(self._result)
        if self._signal_function:
            self._signal_function(self)

    def get_result(self, timeout=None):
        return self._future.result(timeout=timeout)

    def cancel(self) -> None:
        self._future.set_exception(CancelledError())

    @property
    def done(self) -> bool:
        return self._future.done()


class Picamera2:
    """Stand-in camera. ``scene``: an RGB colour, an HxWx3 array, or ``f(w, h, n) -> array``.

    ``platform``: "VC4" (Pi 4 and older: lores must be YUV) or "PISP" (Pi 5).
    ``colour_space``: reported colour space (default sYCC, like the preview configuration).
    ``stall``: the sensor delivers no frames (a dislodged cable, a hung ISP): captures queue up
    and time out; set it back with :meth:`resume`. ``fail_on``: a method name that raises
    RuntimeError. ``block_on``: a method name that blocks until ``unblock`` is set (a driver
    call that never returns). Every instance is appended to ``Picamera2.instances``.
    """

    instances: List["Picamera2"] = []

    def __init__(self, camera_num: int = 0, *, scene: Scene = (255, 0, 0),
                 platform: str = "VC4", colour_space: Optional[ColorSpace] = None,
                 stall: bool = False, fail_on: Optional[str] = None,
                 block_on: Optional[str] = None):
        self.platform = Platform(platform)
        self.scene = scene
        self._colour_space = colour_space or ColorSpace.Sycc()
        self.stall = stall
        self.fail_on = fail_on
        self.block_on = block_on
        self.unblock = threading.Event()
        self.camera_config = None
        self.started = False
        self.is_open = True
        self.closed = False
        self.calls: List[str] = []
        self.captures = 0
        self.controls: dict = {}  # set_controls so far (upstream: sent with the next request)
        full = FIELD_OF_VIEW
        self.camera_controls = {"ScalerCrop": ((0, 0, 64, 64), full, full),
                                "ExposureTime": (1, 66666, 20000)}
        if platform == "PISP":
            self.camera_controls["ScalerCrops"] = ((0, 0, 64, 64), full, full)
        self.lock = threading.Lock()  # the job list and the ready frame, as upstream
        self.changed = threading.Condition()  # notified whenever a job is queued or leaves
        self._job_list: List[Job] = []
        self._frame_ready = False  # upstream's completed_requests (kept to one, _max_queue_len)
        self._event_loop_running = False
        Picamera2.instances.append(self)

    @classmethod
    def started(cls, lores=(64, 48), **kwargs) -> "Picamera2":
        """A stand-in configured with a ``lores`` stream (YUV420 on VC4) and started."""
        cam = cls(**kwargs)
        cam.configure(cam.create_preview_configuration(lores={"size": lores}))
        cam.start()
        return cam

    # --- test controls -----------------------------------------------------------------------
    @property
    def queued_jobs(self) -> int:
        """Jobs waiting in the event loop's queue."""
        with self.lock:
            return len(self._job_list)

    def wait_until(self, predicate: Callable[["Picamera2"], bool], timeout: float = 30.0) -> bool:
        """Wait (on a condition, not a sleep) until ``predicate(self)``; False if it never is."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)

    def resume(self) -> None:
        """Frames flow again: the queued jobs run in order, the oldest gets the next frame."""
        self.stall = False
        self._run_event_loop(immediate=True)

    # --- the event loop ----------------------------------------------------------------------
    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _turn(self, frame: bool) -> bool:
        """One pass of upstream's process_requests: maybe a new frame, then the queue in order
        until a job is not done. True if a job finished."""
        with self.lock:
            if frame:
                self._frame_ready = True
            finished = []
            while self._job_list:
                if self._job_list[0].execute():
                    finished.append(self._job_list.pop(0))
                else:
                    break
        for job in finished:
            job.signal()
        if finished:
            self._notify()
        return bool(finished)

    def _run_event_loop(self, immediate: bool) -> None:
        """What the NullPreview thread would do next: a frame per turn while the sensor runs,
        else one turn only when prodded (``immediate``: a stop or mode switch)."""
        if not self._event_loop_running:
            return
        if self.started and not self.stall:
            while self.queued_jobs and self._turn(frame=True):
                pass
        elif immediate:
            self._turn(frame=False)

    def dispatch_functions(self, functions, wait, signal_function=None, immediate=False):
        """Queue a job and wait for it as upstream: ``wait`` True/None: for ever (None: unless
        a ``signal_function`` is given), False: return the job, a number: seconds, then
        ``TimeoutError`` with the job left in the queue."""
        if wait is None:
            wait = signal_function is None
        timeout = None if wait is True else wait
        with self.lock:
            job = Job(functions, signal_function)
            self._job_list.append(job)
        self._notify()
        self._run_event_loop(immediate)
        return job.get_result(timeout=timeout) if wait else job

    def cancel_all_and_flush(self) -> None:
        """Cancel every queued job and empty the queue (upstream's words: for tidying up after
        an operation timed out, e.g. a dislodged cable, so that the camera can be closed)."""
        self._call("cancel_all_and_flush")
        with self.lock:
            for job in self._job_list:
                job.cancel()
            self._job_list = []
        self._notify()

    # --- the API PicameraSource uses ---------------------------------------------------------
    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.closed and name not in ("close", "cancel_all_and_flush"):
            raise RuntimeError("Camera not opened")
        if self.fail_on == name:
            raise RuntimeError(f"stand-in {name} failure")
        if self.block_on == name:
            self.unblock.wait()

    def create_preview_configuration(self, main=None, lores=None, **kwargs) -> dict:
        self._call("create_preview_configuration")
        main = {"format": "XBGR8888", "size": (640, 480), **(main or {})}
        if lores is not None:
            lores = {"format": "YUV420", "size": main["size"], **lores}
        return {"use_case": "preview", "colour_space": self._colour_space, "buffer_count": 4,
                "main": main, "lores": lores, "raw": None, "controls": {}, **kwargs}

    def configure(self, config: dict) -> None:
        self._call("configure")
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        config = copy.copy(config)
        for name in ("main", "lores"):
            stream = config.get(name)
            if stream is None:
                continue
            w, h = stream["size"]
            if w % 2 or h % 2:
                raise RuntimeError("width and height should be even")
        lores = config.get("lores")
        if lores is not None:
            fmt = lores["format"]
            if self.platform.name == "VC4" and fmt not in ("YUV420", "YVU420"):
                raise RuntimeError("lores stream must be YUV")
            mw, mh = config["main"]["size"]
            w, h = lores["size"]
            if w > mw or h > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            lores = dict(lores)
            if fmt in ("YUV420", "YVU420"):
                lores["stride"] = -(-w // 64) * 64  # padded, as the ISP does
            else:
                lores["stride"] = w * (4 if fmt.startswith("X") else 3)
            config["lores"] = lores
        self.camera_config = config

    def set_controls(self, controls: dict) -> None:
        """As upstream's ``Controls.set_controls``: every name must be advertised."""
        self._call("set_controls")
        for name, value in controls.items():
            if name not in self.camera_controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
            self.controls[name] = value

    def _scaler_crop(self, name: str):
        """The rectangle of the field of view stream ``name`` shows, or None (the default)."""
        crops = self.controls.get("ScalerCrops")
        if crops is not None:
            return tuple(crops[1 if name == "lores" and len(crops) > 1 else 0])
        crop = self.controls.get("ScalerCrop")
        return tuple(crop) if crop is not None else None

    def start(self) -> None:
        """Start the sensor and, as ``start(show_preview=False)`` does, the NullPreview loop."""
        self._call("start")
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self._event_loop_running = True
        self.started = True

    def capture_array_(self, name: str):
        """The job's one function: (False, None) until a frame is ready, then the array."""
        if not self._frame_ready:
            return (False, None)
        self._frame_ready = False
        return (True, self._make_array(name))

    def capture_array(self, name: str = "main", wait=None, signal_function=None):
        self._call("capture_array")
        return self.dispatch_functions([partial(self.capture_array_, name)], wait,
                                       signal_function)

    def _make_array(self, name: str) -> np.ndarray:
        stream = self.camera_config[name]
        w, h = stream["size"]
        self.captures += 1
        rect = self._scaler_crop(name)
        if rect is None:
            rgb = render(self.scene, w, h, self.captures)
        else:
            rgb = self._through_isp(rect, w, h)
        fmt = stream["format"]
        if fmt == "RGB888":
            return np.ascontiguousarray(rgb[..., ::-1])
        if fmt == "BGR888":
            return rgb.copy()
        alpha = np.full((h, w, 1), 255, dtype=np.uint8)
        if fmt == "XRGB8888":
            return np.concatenate([rgb[..., ::-1], alpha], axis=2)
        if fmt == "XBGR8888":
            return np.concatenate([rgb, alpha], axis=2)
        if fmt == "YUV420":
            full = "Limited" not in self.camera_config["colour_space"].range
            return encode_i420(rgb, full_range=full, stride=stream["stride"])
        raise RuntimeError("Format " + fmt + " not supported")

    def _through_isp(self, rect, w: int, h: int) -> np.ndarray:
        """The ScalerCrop ``rect`` of the scene (the whole field of view), scaled to w x h."""
        fx, fy, fw, fh = FIELD_OF_VIEW
        x, y, cw, ch = rect
        x, y = max(fx, x), max(fy, y)
        cw, ch = min(cw, fx + fw - x), min(ch, fy + fh - y)  # clamped as libcamera does
        k = _SENSOR_SCALE
        if isinstance(self.scene, np.ndarray):
            sensor = Image.fromarray(self.scene.astype(np.uint8))
            k = fw / sensor.width
        else:
            sensor = Image.fromarray(render(self.scene, fw // k, fh // k, self.captures))
        box = ((x - fx) / k, (y - fy) / k, (x - fx + cw) / k, (y - fy + ch) / k)
        return np.asarray(sensor.resize((w, h), Image.BILINEAR, box=box), dtype=np.uint8)

    def stop_(self, request=None):
        """Stop the sensor (runs in the event loop when there is one)."""
        if self.started:
            self.started = False
            self._frame_ready = False  # upstream releases completed_requests
        return (True, None)

    def stop(self) -> None:
        """As upstream: with the event loop running, the stop is a job queued behind the others
        and waited for without a timeout; so a stalled capture still queued blocks it."""
        self._call("stop")
        if not self.started:
            return
        if self._event_loop_running:
            self.dispatch_functions([self.stop_], wait=True, immediate=True)
        else:
            self.stop_()

    def close(self) -> None:
        """As upstream: stop the event loop (the preview), then stop directly and release."""
        self._call("close")
        self._event_loop_running = False
        if not self.is_open:
            return
        self.stop()
        self.is_open = False
        self.closed = True
        self._notify()


def failing_picamera2(message: str = "Camera __init__ sequence did not complete."):
    """A factory that fails to open, as ``Picamera2()`` does with no camera or a busy one."""
    def open_camera(camera_num: int = 0):
        raise RuntimeError(message)
    return open_camera


def in_thread(call: Callable[[], object]):
    """Run ``call()`` on a daemon thread (to watch for a hang): the thread, and a list that
    receives the call's result or the exception it raised."""
    outcome: list = []

    def run():
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome
