"""The built-in demo: the whole story on any machine, in a few seconds.

It fetches the sample photos (checksummed, like the models), replays them as if a camera saw
them, presses simulated buttons (real gpiozero code on mock pins) to teach three classes from
one or two photos each, then shows every photo: what it was taught is recognised, and what it
never saw (an owl, a sunflower, Grace Hopper) comes out as ``unknown``. Predictions are published as JSON lines
on standard output, or to an MQTT broker with ``--broker``; the story is told on standard error.
With ``--web PORT`` the web studio is served too, and the photos go round (two seconds each)
until Ctrl-C.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from edge_classifier.backbone.fetch import fetch, installed_path
from edge_classifier.backbone.manifest import load_manifest
from edge_classifier.config import (ClassConfig, Config, GpioConfig, MqttConfig, SmoothingConfig,
                                    WebConfig)
from edge_classifier.errors import EndOfStream
from edge_classifier.frames.images import load_image
from edge_classifier.frames.sources import FrameSource
from edge_classifier.device.loop import Device
from edge_classifier.device.runner import run_device

log = logging.getLogger("edge_classifier.device.demo")

# (class, button pin, photos taught with it)
TEACH: List[Tuple[str, int, List[str]]] = [
    ("bird", 17, ["bird.bmp", "parrot.jpg"]),
    ("cat", 27, ["cat.bmp"]),
    ("hot dog", 22, ["hot_dog.jpg"]),
]
SHOW = ["owl.jpg", "cat.bmp", "parrot.jpg", "hot_dog.jpg", "sunflower.bmp", "grace_hopper.bmp"]
FRAMES_PER_PHOTO = 4  # the smoother needs 3 agreeing frames
WEB_FPS, WEB_FRAMES_PER_PHOTO = 10, 20  # with the studio: the photos go round, 2 s each


class ScriptedSource(FrameSource):
    """Frames from a list; ``hooks[i]`` runs just before frame ``i`` is returned."""

    def __init__(self, frames: List[Tuple[str, np.ndarray]],
                 hooks: Dict[int, Callable[[], None]],
                 repeat: Optional[List[Tuple[str, np.ndarray]]] = None, fps: float = 0.0):
        super().__init__(fps)
        self.frames = frames
        self.hooks = hooks
        self.repeat = repeat or []  # after the script: these, round and round
        self.current = ""

    def _check_more(self) -> None:
        if self.frames_read >= len(self.frames) and not self.repeat:
            raise EndOfStream("demo script finished")

    def _read(self) -> np.ndarray:
        hook = self.hooks.get(self.frames_read)
        if hook is not None:
            hook()
        i = self.frames_read
        self.current, frame = self.frames[i] if i < len(self.frames) else \
            self.repeat[(i - len(self.frames)) % len(self.repeat)]
        return frame.copy()


def demo_config(broker: Optional[str], threads: Optional[int], web: str = "") -> Config:
    base = Config(device_id="demo", web=WebConfig(listen=web))
    return replace(
        base, keyboard="off",
        classes=tuple(ClassConfig(name, button=pin) for name, pin, _ in TEACH),
        gpio=GpioConfig(pin_factory="mock", bounce_time=0.0, hold_rate=100.0),
        smoothing=SmoothingConfig(frames=3, threshold=0.6),
        model=replace(base.model, threads=threads or 0),
        mqtt=MqttConfig(broker=broker or "", prediction_interval=0.0, discovery=bool(broker)))


def run_demo(state_dir: str, mirror: Optional[str] = None, broker: Optional[str] = None,
             threads: Optional[int] = None, web: str = "") -> int:
    manifest = load_manifest()
    photos = sorted({p for _, _, ps in TEACH for p in ps} | set(SHOW))
    fetch([manifest.default_embedding_model] + photos, mirror=mirror)
    decoded = {p: load_image(installed_path(manifest.get(p))) for p in photos}

    frames: List[Tuple[str, np.ndarray]] = []
    hooks: Dict[int, Callable[[], None]] = {}
    device_box: Dict[str, Device] = {}

    def press(name: str, pin: int) -> Callable[[], None]:
        def hook() -> None:
            log.info("demo: pressing the '%s' button (GPIO %d)", name, pin)
            factory = device_box["device"].panel.pin_factory
            factory.pin(pin).drive_low()
            factory.pin(pin).drive_high()
        return hook

    for name, pin, taught in TEACH:
        for photo in taught:
            hooks[len(frames)] = press(name, pin)
            frames += [(photo, decoded[photo])] * 2  # the press is applied on the next frame
    first_show = len(frames)
    for photo in SHOW:
        frames += [(photo, decoded[photo])] * FRAMES_PER_PHOTO
    repeat = [(p, decoded[p]) for p in SHOW for _ in range(WEB_FRAMES_PER_PHOTO)] if web else []
    source = ScriptedSource(frames, hooks, repeat, fps=WEB_FPS if web else 0.0)

    config = demo_config(broker, threads, web)
    device = Device(config, source=source, state_dir=state_dir)
    device_box["device"] = device
    log.info("demo: %s embeddings, head '%s', state in %s", device.backbone.name,
             device.learner.head_name, device.store.root)
    shown: List[Tuple[str, str, str, float]] = []
    original_step = device.step

    def step(frame: np.ndarray, overlap: bool = False) -> None:
        original_step(frame)  # finished at once: the state it shows is this frame's
        index = source.frames_read - 1
        if index == len(frames) and web:
            log.info("demo: the studio is at %s; Ctrl-C to stop", device.web.url)
        if first_show <= index < len(frames) and \
                (index - first_show) % FRAMES_PER_PHOTO == FRAMES_PER_PHOTO - 1:
            p = device.learner.predict(frame)
            shown.append((source.current, device.state, p.best or "-", p.confidence))
    device.step = step
    run_device(device, None)

    print("\nedge-classifier demo: taught "
          + ", ".join(f"'{n}' ({len(t)} photo{'s' if len(t) > 1 else ''})" for n, _, t in TEACH)
          + " with simulated button presses, then showed:", file=sys.stderr)
    for photo, state, best, confidence in shown:
        note = f"(closest: {best}, {confidence:.0%})" if state == "unknown" else \
            f"({confidence:.0%})"
        print(f"  {photo:<18} -> {state} {note}", file=sys.stderr)
    return 0
