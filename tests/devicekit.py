"""Helpers for tests that run the device: configs, the loop in a thread, button presses."""

from __future__ import annotations

import threading

from mosquitto import TIMEOUT

from edge_classifier.device.loop import Device
from edge_classifier.config import ClassConfig, Config, GpioConfig, MqttConfig, SmoothingConfig
from edge_classifier.frames.sources import ReplaySource

BIRD_PIN, CAT_PIN, LED_PIN = 17, 27, 5


def make_config(server=None, **mqtt) -> Config:
    fields = dict(broker=server.url if server else "", keepalive=5, reconnect_min=0.05,
                  reconnect_max=0.2, prediction_interval=0.0, stats_interval=1.0)
    fields.update(mqtt)
    return Config(device_id="dev1", keyboard="off",
                  classes=(ClassConfig("bird", button=BIRD_PIN, led=LED_PIN),
                           ClassConfig("cat", button=CAT_PIN)),
                  gpio=GpioConfig(pin_factory="mock", bounce_time=0.0, hold_rate=50.0),
                  smoothing=SmoothingConfig(frames=2, threshold=0.5),
                  mqtt=MqttConfig(**fields))


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
        target = self.device.counters.frames + n
        deadline = threading.Event()
        for _ in range(int(timeout / 0.01)):
            if self.device.counters.frames >= target or not self.thread.is_alive():
                break
            deadline.wait(0.01)
        assert self.device.counters.frames >= target, "the loop stopped making progress"

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


def wait_until(predicate, timeout=TIMEOUT):
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        done.wait(0.01)
    return predicate()
