"""Helpers for tests that run the device: configs, the loop in a thread, button presses.

::

    device = device_factory(make_config(broker), clock=FakeClock())
    running = Running(device)       # device.run() in a thread
    running.wait_frames(2)
    press(device, BIRD_PIN)
    running.finish()                # stop, join, re-raise what the loop raised
"""

from __future__ import annotations

import threading

from mosquitto import mqtt_config
from waiting import TIMEOUT, wait_until

from edge_classifier.device.loop import Device
from edge_classifier.config import ClassConfig, Config, GpioConfig, SmoothingConfig
from edge_classifier.frames.sources import ReplaySource

BIRD_PIN, CAT_PIN, LED_PIN = 17, 27, 5


def make_config(server=None, **mqtt) -> Config:
    """Device "dev1": classes bird (button BIRD_PIN, LED LED_PIN) and cat (button CAT_PIN) on
    mock pins, no keyboard, 2-frame smoothing, and mosquitto.mqtt_config's test timings with
    stats every second; ``mqtt`` overrides MqttConfig fields."""
    mqtt.setdefault("stats_interval", 1.0)
    return mqtt_config(server, **mqtt).replace(
        keyboard="off",
        classes=(ClassConfig("bird", button=BIRD_PIN, led=LED_PIN),
                 ClassConfig("cat", button=CAT_PIN)),
        gpio=GpioConfig(pin_factory="mock", bounce_time=0.0, hold_rate=50.0),
        smoothing=SmoothingConfig(frames=2, threshold=0.5))


def device_factory(tmp_path, backbones, sample):
    """Fixture body (registered in conftest): ``make(config, photos, state, **parts)`` builds
    devices on the session's backbone and replayed sample photos; all closed after the test."""
    made = []

    def make(config, photos=("bird.bmp", "cat.bmp"), state=None, **kwargs):
        source = kwargs.pop("source", None) or ReplaySource([sample(p) for p in photos])
        device = Device(config, backbone=backbones(), source=source,
                        state_dir=state or tmp_path / "state", **kwargs)
        made.append(device)
        return device
    yield make
    for device in made:
        device.stop()
        device.close()


class Running:
    """The device loop in a background thread (as ``edge-classifier run`` runs it)."""

    def __init__(self, device, frames=None):
        self.device = device
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(frames,), daemon=True)
        self.thread.start()

    def _run(self, frames):
        try:
            self.device.run(frames=frames)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def wait_frames(self, n, timeout=TIMEOUT):
        """Wait until the loop has done ``n`` more frames (AssertionError if it stops)."""
        target = self.device.counters.frames + n
        wait_until(lambda: self.device.counters.frames >= target or not self.thread.is_alive(),
                   timeout)
        assert self.device.counters.frames >= target, \
            f"the loop stopped making progress: {self.error!r}"

    def finish(self):
        self.device.stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


def press(device, pin):
    factory = device.panel.pin_factory
    factory.pin(pin).drive_low()
    factory.pin(pin).drive_high()
