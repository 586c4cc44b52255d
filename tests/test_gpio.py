"""ButtonPanel driven through gpiozero's real code with MockFactory pins and a FakeClock.

Presses are ``pin.drive_low()`` (buttons pull up; pressed = low), releases ``drive_high()``.
Time only moves when a test advances the clock; what happens later than a press (hold repeats,
the end of a blink, arming the delete button) happens in ``panel.tick()``, as the device loop
calls it every frame. Nothing here sleeps or waits.
"""

from __future__ import annotations

import threading

import pytest
from gpiozero import Button
from gpiozero.pins.mock import MockFactory

from edge_classifier.core.clock import FakeClock
from edge_classifier.config import ClassConfig, GpioConfig
from edge_classifier.comms.events import Capture, ClearClass, DeleteLast
from edge_classifier.device.gpio import STATUS_BLINK, ButtonPanel, GpioError

APPLE_BUTTON, APPLE_LED, PEAR_BUTTON, PEAR_LED = 17, 22, 27, 23
DELETE_BUTTON, STATUS_LED = 5, 6
CLASSES = (ClassConfig("apple", button=APPLE_BUTTON, led=APPLE_LED),
           ClassConfig("pear", button=PEAR_BUTTON, led=PEAR_LED))
APPLE = Capture(class_name="apple", origin="button")


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
    values = dict(delete_button=DELETE_BUTTON, status_led=STATUS_LED, hold_rate=4.0,
                  bounce_time=0.05, long_press=1.0, very_long_press=5.0)
    values.update(changes)
    return GpioConfig(**values)


@pytest.fixture
def rig(factory):
    """(panel, recorder, clock, factory) with two classes, a delete button and a status LED;
    hold_rate 4/s (a repeat every 0.25 s, exact in binary), blink_time 0.05 s."""
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


def run_ticks(panel, clock, seconds, step=1 / 32):
    """Tick every ``step`` seconds of fake time for ``seconds``, as a loop at 1/step fps."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        panel.tick()


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


def test_holding_captures_continuously_at_hold_rate(rig):
    panel, recorder, clock, factory = rig
    pin = factory.pin(APPLE_BUTTON)
    pin.drive_low()
    run_ticks(panel, clock, 1.0)  # held 1 s at 4 captures/s, ticked 32 times a second
    assert recorder.events == [APPLE] * (1 + 4)  # the press, then one every 0.25 s
    pin.drive_high()
    run_ticks(panel, clock, 1.0)
    assert recorder.count(Capture) == 5  # nothing after the release


def test_a_late_tick_gives_one_capture_and_skips_the_missed_repeats(rig):
    panel, recorder, clock, factory = rig
    factory.pin(APPLE_BUTTON).drive_low()
    clock.advance(1.1)  # a slow frame: four repeats were due
    panel.tick()
    assert recorder.count(Capture) == 2  # the press and one repeat, not a burst of four
    clock.advance(0.1)  # 1.2 s: the next repeat is at 1.25 s, not at once
    panel.tick()
    assert recorder.count(Capture) == 2
    clock.advance(0.05)
    panel.tick()
    assert recorder.count(Capture) == 3


def test_release_between_ticks_stops_the_repeats(rig):
    panel, recorder, clock, factory = rig
    press(factory, PEAR_BUTTON, clock, 0.1)
    run_ticks(panel, clock, 2.0)
    assert recorder.count(Capture) == 1


def test_chatter_while_pressing_does_not_stop_the_hold(rig):
    panel, recorder, clock, factory = rig
    pin = factory.pin(APPLE_BUTTON)
    pin.drive_low()
    pin.drive_high()  # contact chatter: the release and the second press are within bounce_time
    pin.drive_low()
    run_ticks(panel, clock, 0.5)
    assert recorder.events == [APPLE] * 3  # the press and repeats at 0.25 s and 0.5 s
    assert panel.ignored_bounces == 2  # the release and the second press


def test_buttons_are_configured_from_gpio_config(rig):
    panel = rig[0]
    button = panel.buttons["pear"]
    assert button.pull_up
    assert panel.hold_period == pytest.approx(0.25)  # 1 / hold_rate


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


def test_delete_hold_lights_then_blinks_status_led(rig):
    panel, recorder, clock, factory = rig
    led, pin = panel.status_led, factory.pin(DELETE_BUTTON)
    pin.drive_low()
    run_ticks(panel, clock, 0.75)
    assert not led.is_lit  # a release now would be a tap
    run_ticks(panel, clock, 0.5)
    assert led.is_lit  # past long_press: a release deletes the last sample
    run_ticks(panel, clock, 3.5)
    assert led.is_lit  # steady while armed to delete (4.75 s held)
    states = []
    for _ in range(16):  # past very_long_press (5 s): armed to clear, the LED blinks
        clock.advance(STATUS_BLINK / 2)
        panel.tick()
        states.append(led.is_lit)
    assert set(states) == {True, False}
    pin.drive_high()
    assert not led.is_lit
    assert recorder.events == [ClearClass(class_name=None, origin="button")]


def test_status_led_goes_out_when_an_armed_delete_is_released(rig):
    panel, recorder, clock, factory = rig
    factory.pin(DELETE_BUTTON).drive_low()
    run_ticks(panel, clock, 1.5)
    assert panel.status_led.is_lit
    factory.pin(DELETE_BUTTON).drive_high()
    assert not panel.status_led.is_lit
    assert recorder.events == [DeleteLast(class_name=None, origin="button")]


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


def test_blink_capture_flashes_class_led_for_blink_time(rig):
    panel, recorder, clock, factory = rig
    assert panel.blink_capture("apple")
    assert panel.leds["apple"].is_lit and panel.blinking == ["apple"]
    clock.advance(0.04)
    panel.tick()
    assert panel.leds["apple"].is_lit  # 40 ms of a 50 ms blink
    clock.advance(0.01)
    panel.tick()
    assert not panel.leds["apple"].is_lit and panel.blinking == []


def test_blink_capture_of_predicted_class_dips_and_restores(rig):
    panel, recorder, clock, factory = rig
    panel.show_prediction("pear")
    panel.blink_capture("pear")
    assert not panel.leds["pear"].is_lit
    run_ticks(panel, clock, 0.0625)
    assert panel.leds["pear"].is_lit


def test_prediction_change_during_blink_applies_after_it(rig):
    panel, recorder, clock, factory = rig
    panel.blink_capture("pear")  # pear flashes on
    panel.show_prediction("apple")  # apple lights now; pear is mid-blink: not written yet
    assert panel.leds["apple"].is_lit and panel.leds["pear"].is_lit
    run_ticks(panel, clock, 0.0625)  # the blink ends: pear takes the prediction's state
    assert panel.leds["apple"].is_lit and not panel.leds["pear"].is_lit


def test_a_second_blink_restarts_the_first(rig):
    panel, recorder, clock, factory = rig
    panel.blink_capture("apple")
    clock.advance(0.04)
    panel.blink_capture("apple")  # a capture 40 ms later: the blink lasts 50 ms from now
    clock.advance(0.04)
    panel.tick()
    assert panel.blinking == ["apple"]
    clock.advance(0.01)
    panel.tick()
    assert panel.blinking == [] and not panel.leds["apple"].is_lit


def test_blink_capture_uses_status_led_for_class_without_led(factory):
    classes = (ClassConfig("cup", button=APPLE_BUTTON),)
    clock = FakeClock()
    with ButtonPanel(classes, gpio(), Recorder(), pin_factory=factory, clock=clock,
                     blink_time=0.05) as panel:
        assert panel.blink_capture("cup")
        assert panel.status_led.is_lit and panel.blinking == ["status"]
        run_ticks(panel, clock, 0.0625)
        assert not panel.status_led.is_lit


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


def test_on_event_exception_does_not_stop_the_hold_repeats(rig):
    panel, _, clock, factory = rig
    calls = []

    def broken(event):
        calls.append(event)
        raise RuntimeError("queue full")

    panel._on_event = broken
    factory.pin(PEAR_BUTTON).drive_low()
    run_ticks(panel, clock, 1.0)  # tick() never raises
    assert len(calls) == 5  # the press and four repeats, each one raising
    assert panel.callback_errors == 5


def test_tick_after_close_does_nothing(rig):
    panel, recorder, clock, factory = rig
    factory.pin(APPLE_BUTTON).drive_low()
    panel.blink_capture("pear")
    panel.close()
    clock.advance(1.0)
    panel.tick()
    assert recorder.count(Capture) == 1  # the press only


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
