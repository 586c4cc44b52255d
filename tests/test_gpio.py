"""ButtonPanel driven through gpiozero's real code with MockFactory pins.

Presses are ``pin.drive_low()`` (buttons pull up; pressed = low), releases ``drive_high()``.
Press durations for the delete button come from a FakeClock; hold-to-record uses gpiozero's
real hold thread, so those tests hold for a short real time with a high hold rate.
"""

from __future__ import annotations

import threading
import time

import pytest
from gpiozero import Button
from gpiozero.pins.mock import MockFactory

from edge_classifier.core.clock import FakeClock
from edge_classifier.config import ClassConfig, GpioConfig
from edge_classifier.comms.events import Capture, ClearClass, DeleteLast
from edge_classifier.device.gpio import ButtonPanel, GpioError

APPLE_BUTTON, APPLE_LED, PEAR_BUTTON, PEAR_LED = 17, 22, 27, 23
DELETE_BUTTON, STATUS_LED = 5, 6
CLASSES = (ClassConfig("apple", button=APPLE_BUTTON, led=APPLE_LED),
           ClassConfig("pear", button=PEAR_BUTTON, led=PEAR_LED))


class Recorder:
    """Thread-safe on_event that records events."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()

    def __call__(self, event):
        with self._lock:
            self.events.append(event)

    def count(self, kind=None):
        with self._lock:
            return sum(1 for e in self.events if kind is None or isinstance(e, kind))


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.close()


def gpio(**changes):
    values = dict(delete_button=DELETE_BUTTON, status_led=STATUS_LED, hold_rate=5.0,
                  bounce_time=0.05, long_press=1.0, very_long_press=5.0)
    values.update(changes)
    return GpioConfig(**values)


@pytest.fixture
def rig(factory):
    """(panel, recorder, clock, factory) with two classes, a delete button and a status LED."""
    recorder, clock = Recorder(), FakeClock()
    panel = ButtonPanel(CLASSES, gpio(), recorder, pin_factory=factory, clock=clock,
                        blink_time=0.05)
    yield panel, recorder, clock, factory
    panel.close()


def press(factory, pin, clock=None, seconds=0.0):
    factory.pin(pin).drive_low()
    if clock is not None:
        clock.advance(seconds)
    factory.pin(pin).drive_high()


def wait_until(condition, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


# --- class buttons ------------------------------------------------------------------------------
def test_press_captures_one_sample_of_its_class(rig):
    panel, recorder, clock, factory = rig
    press(factory, PEAR_BUTTON, clock, 0.1)
    assert recorder.events == [Capture(class_name="pear", origin="button")]


def test_separate_presses_capture_separately(rig):
    panel, recorder, clock, factory = rig
    for _ in range(3):
        press(factory, APPLE_BUTTON, clock, 0.1)
        clock.advance(0.2)
    assert recorder.count(Capture) == 3


def test_contact_bounce_is_one_capture(rig):
    panel, recorder, clock, factory = rig
    pin = factory.pin(APPLE_BUTTON)
    for _ in range(4):  # chatter within bounce_time (the fake clock does not move)
        pin.drive_low()
        pin.drive_high()
    assert recorder.count(Capture) == 1
    assert panel.ignored_bounces >= 3


def test_holding_captures_continuously_at_hold_rate(factory):
    recorder = Recorder()
    with ButtonPanel(CLASSES, gpio(hold_rate=20.0), recorder, pin_factory=factory) as panel:
        pin = factory.pin(APPLE_BUTTON)
        start = time.monotonic()
        pin.drive_low()
        time.sleep(0.3)  # real time: gpiozero's hold thread fires every 0.05 s
        pin.drive_high()
        held_for = time.monotonic() - start
        held = recorder.count(Capture)
        time.sleep(0.12)
        assert recorder.count(Capture) == held  # nothing after release
    assert 3 <= held <= 1 + held_for / 0.05  # the press, then one every 1 / hold_rate
    assert all(e == Capture(class_name="apple", origin="button") for e in recorder.events)
    assert panel.buttons["apple"].hold_repeat and panel.buttons["apple"].hold_time == 0.05


def test_buttons_are_configured_from_gpio_config(rig):
    panel = rig[0]
    button = panel.buttons["pear"]
    assert button.pull_up and button.hold_repeat
    assert button.hold_time == pytest.approx(0.2)  # 1 / hold_rate


# --- the delete button --------------------------------------------------------------------------
def test_delete_tap_does_nothing(rig):
    panel, recorder, clock, factory = rig
    press(factory, DELETE_BUTTON, clock, 0.3)
    assert recorder.events == []


def test_delete_long_press_deletes_last_sample(rig):
    panel, recorder, clock, factory = rig
    press(factory, DELETE_BUTTON, clock, 1.5)
    assert recorder.events == [DeleteLast(class_name=None, origin="button")]


def test_delete_very_long_press_clears_the_class(rig):
    panel, recorder, clock, factory = rig
    press(factory, DELETE_BUTTON, clock, 5.0)
    assert recorder.events == [ClearClass(class_name=None, origin="button")]


def test_delete_release_bounce_adds_nothing(rig):
    panel, recorder, clock, factory = rig
    press(factory, DELETE_BUTTON, clock, 1.5)
    pin = factory.pin(DELETE_BUTTON)
    pin.drive_low()
    pin.drive_high()  # bounce right after the release: within bounce_time
    assert recorder.events == [DeleteLast(class_name=None, origin="button")]


def test_delete_hold_lights_then_blinks_status_led(factory):
    recorder = Recorder()
    config = gpio(long_press=0.1, very_long_press=0.3)
    with ButtonPanel(CLASSES, config, recorder, pin_factory=factory) as panel:
        led = panel.status_led
        pin = factory.pin(DELETE_BUTTON)
        pin.drive_low()
        assert wait_until(lambda: led.is_lit)  # armed: release deletes the last sample
        time.sleep(0.45)  # past very_long_press: armed to clear, the LED blinks
        states = set()
        for _ in range(60):
            states.add(led.is_lit)
            time.sleep(0.005)
        pin.drive_high()
        assert states == {True, False}
        assert wait_until(lambda: not led.is_lit)
    assert recorder.events == [ClearClass(class_name=None, origin="button")]


# --- LEDs ---------------------------------------------------------------------------------------
def test_show_prediction_lights_only_that_class(rig):
    panel, recorder, clock, factory = rig
    panel.show_prediction("pear")
    assert factory.pin(PEAR_LED).state and not factory.pin(APPLE_LED).state
    panel.show_prediction("apple")
    assert panel.leds["apple"].is_lit and not panel.leds["pear"].is_lit


def test_show_unknown_turns_all_class_leds_off(rig):
    panel = rig[0]
    panel.show_prediction("apple")
    panel.show_prediction("unknown")
    assert not any(led.is_lit for led in panel.leds.values())


def test_blink_capture_flashes_class_led(rig):
    panel, recorder, clock, factory = rig
    assert panel.blink_capture("apple")
    assert panel.leds["apple"].is_lit
    assert wait_until(lambda: not panel.leds["apple"].is_lit)


def test_blink_capture_of_predicted_class_dips_and_restores(rig):
    panel = rig[0]
    panel.show_prediction("pear")
    panel.blink_capture("pear")
    assert not panel.leds["pear"].is_lit
    assert wait_until(lambda: panel.leds["pear"].is_lit)


def test_prediction_change_during_blink_applies_after_it(rig):
    panel = rig[0]
    panel.blink_capture("pear")  # pear flashes on
    panel.show_prediction("pear")  # mid-blink: not written now...
    time.sleep(0.15)  # ...but when the blink ends (three blink times ago): pear stays lit
    assert panel.leds["pear"].is_lit and not panel.leds["apple"].is_lit


def test_blink_capture_uses_status_led_for_class_without_led(factory):
    classes = (ClassConfig("cup", button=APPLE_BUTTON),)
    with ButtonPanel(classes, gpio(), Recorder(), pin_factory=factory,
                     blink_time=0.05) as panel:
        assert panel.blink_capture("cup")
        assert panel.status_led.is_lit
        assert wait_until(lambda: not panel.status_led.is_lit)


def test_blink_capture_without_any_led_returns_false(factory):
    classes = (ClassConfig("cup", button=APPLE_BUTTON),)
    with ButtonPanel(classes, gpio(status_led=None), Recorder(), pin_factory=factory) as panel:
        assert panel.blink_capture("cup") is False


def test_set_status_lights_status_led(rig):
    panel = rig[0]
    panel.set_status(True)
    assert panel.status_led.is_lit
    panel.set_status(False)
    assert not panel.status_led.is_lit


# --- robustness ---------------------------------------------------------------------------------
def test_on_event_exception_is_counted_not_raised(rig):
    panel, _, clock, factory = rig

    def broken(event):
        raise RuntimeError("queue full")

    panel._on_event = broken
    press(factory, APPLE_BUTTON, clock, 0.1)  # would raise here if it escaped
    assert panel.callback_errors == 1


def test_on_event_exception_does_not_kill_the_hold_thread(factory):
    calls = []

    def broken(event):
        calls.append(event)
        raise RuntimeError("queue full")

    with ButtonPanel(CLASSES, gpio(hold_rate=50.0), broken, pin_factory=factory) as panel:
        pin = factory.pin(PEAR_BUTTON)
        pin.drive_low()
        assert wait_until(lambda: len(calls) >= 4)  # press + several repeats despite errors
        pin.drive_high()
        assert panel.callback_errors == len(calls)


def test_close_releases_pins_and_is_safe_twice(factory):
    panel = ButtonPanel(CLASSES, gpio(), Recorder(), pin_factory=factory)
    panel.show_prediction("apple")
    panel.close()
    panel.close()
    assert panel.closed
    assert panel.leds["apple"].closed and panel.delete_button.closed
    Button(APPLE_BUTTON, pin_factory=factory).close()  # the pin is free again


def test_half_built_panel_closes_what_it_made(factory):
    blocker = Button(PEAR_BUTTON, pin_factory=factory)
    try:
        with pytest.raises(GpioError, match=f"GPIO {PEAR_BUTTON} \\(button of class 'pear'\\)"):
            ButtonPanel(CLASSES, gpio(), Recorder(), pin_factory=factory)
        Button(APPLE_BUTTON, pin_factory=factory).close()  # freed by the failed panel
        Button(APPLE_LED, pin_factory=factory).close()
    finally:
        blocker.close()


def test_mock_pin_factory_from_config():
    with ButtonPanel(CLASSES, gpio(pin_factory="mock"), Recorder()) as panel:
        assert isinstance(panel.pin_factory, MockFactory)
        panel.pin_factory.pin(APPLE_BUTTON).drive_low()
        assert panel.buttons["apple"].is_pressed


def test_unknown_pin_factory_name_is_a_gpio_error():
    with pytest.raises(GpioError, match="no-such-factory"):
        ButtonPanel(CLASSES, gpio(pin_factory="no-such-factory"), Recorder())


def test_no_usable_pin_factory_suggests_mock(monkeypatch):
    from gpiozero import Device
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")
    monkeypatch.setattr(Device, "pin_factory", None)
    with pytest.raises(GpioError, match='gpio.pin_factory = "mock"'):
        ButtonPanel(CLASSES, gpio(), Recorder())
