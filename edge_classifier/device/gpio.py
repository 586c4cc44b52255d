"""Buttons and LEDs: teach with one button per class, see the prediction on one LED per class.

::

    panel = ButtonPanel(config.classes, config.gpio, events.put)
    panel.show_prediction("cat")     # every frame: the cat LED on, the others off
    panel.blink_capture("cat")       # after storing a sample: a short blink
    panel.tick()                     # every frame: hold repeats, blinks ending, delete arming
    panel.close()

Wiring (BCM numbers from the config): each button between its GPIO and ground (the internal
pull-up is used, so pressed = low); each LED's anode through a 330 ohm resistor to its GPIO,
cathode to ground.

Class buttons (``ClassConfig.button``), as in Teachable Machine's hold-to-record:

- a press captures one sample: ``Capture(class_name, origin="button")``;
- held, it captures one more every ``1 / hold_rate`` seconds until released, so a hold of T
  seconds gives ``1 + floor(T * hold_rate)`` captures (at most one per :meth:`ButtonPanel.tick`);
- debounced twice: gpiozero's ``bounce_time`` on the pin, and a press arriving less than
  ``bounce_time`` after the button's previous edge (press or release, measured on ``clock``)
  is ignored, so contact chatter is one capture.

The delete button (``gpio.delete_button``) acts on release, by how long it was held
(``clock`` time from press to release):

- shorter than ``long_press``: nothing (a tap deletes nothing);
- ``long_press`` up to ``very_long_press``: ``DeleteLast(None)`` -- the newest sample of the
  class captured last;
- ``very_long_press`` or longer: ``ClearClass(None)`` -- every sample of that class.

While it is held the status LED shows what a release would do: steady on from ``long_press``
(delete), blinking (``STATUS_BLINK`` seconds on, as long off) from ``very_long_press`` (clear).

LEDs: :meth:`ButtonPanel.show_prediction` lights only the predicted class's LED (none for
``unknown``); :meth:`ButtonPanel.blink_capture` inverts a class's LED (or the status LED for a
class without one) for ``blink_time`` seconds; :meth:`ButtonPanel.set_status` sets the status
LED's resting state.

Time: presses and releases arrive in gpiozero's callbacks; everything that happens *later*
(hold repeats, the end of a blink, arming the delete button, the status LED's blinking) happens
in :meth:`ButtonPanel.tick`, which the device loop calls once per frame, against ``clock``. The
panel has no timers or threads of its own, so a test drives it with a
:class:`~edge_classifier.core.clock.FakeClock`::

    pin.drive_low(); clock.advance(0.5); panel.tick()   # held half a second: repeats are due

Callbacks only call ``on_event``; an exception there is logged and counted in
:attr:`ButtonPanel.callback_errors` and never reaches gpiozero's threads.

gpiozero is imported only when a panel is made, so this module imports anywhere.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, Iterable, List, Optional

from edge_classifier.core.clock import SYSTEM_CLOCK, Clock
from edge_classifier.errors import GpioError
from edge_classifier.comms.events import Capture, ClearClass, DeleteLast, Event
from edge_classifier.core.names import UNKNOWN

__all__ = ["ButtonPanel", "GpioError", "make_pin_factory"]

_log = logging.getLogger(__name__)

STATUS_BLINK = 0.1  # seconds on, then as long off, while the delete button is armed to clear
_STATUS = "\0status"  # the status LED's key among the blinks
_DELETE = "\0delete"  # the delete button's key among the edges


def make_pin_factory(name: str):
    """A gpiozero pin factory by name: "" -> None (gpiozero's default, i.e.
    ``$GPIOZERO_PIN_FACTORY`` or the first of lgpio, rpigpio, pigpio, native that loads),
    "mock" -> a new ``MockFactory``, else the factory registered under that name.
    """
    if not name:
        return None
    try:
        if name.lower() == "mock":
            from gpiozero.pins.mock import MockFactory
            return MockFactory()
        from importlib.metadata import entry_points
        found = [ep for ep in entry_points(group="gpiozero_pin_factories")
                 if ep.name == name or ep.name == name.lower()]
        if not found:
            raise GpioError(f"gpio.pin_factory: no gpiozero pin factory called {name!r}")
        return found[0].load()()
    except GpioError:
        raise
    except Exception as exc:
        raise GpioError(f"gpio.pin_factory {name!r} cannot be loaded ({type(exc).__name__}: "
                        f"{exc})") from exc


class ButtonPanel:
    """The capture buttons, the delete button and the LEDs of the device.

    ``classes``: :class:`~edge_classifier.config.ClassConfig` items (name, button, led; either
    pin may be None). ``gpio_config``: :class:`~edge_classifier.config.GpioConfig`.
    ``on_event(event)`` is called from gpiozero's threads and from :meth:`tick`, and must only
    enqueue. ``pin_factory``: a gpiozero factory; None takes ``gpio_config.pin_factory``
    ("mock", a factory name, or "" for gpiozero's default). ``clock``: where every duration is
    measured (press lengths, hold repeats, blinks). If any device cannot be made the ones made
    so far are closed and :class:`GpioError` names the pin.
    """

    def __init__(self, classes: Iterable, gpio_config, on_event: Callable[[Event], None],
                 pin_factory=None, clock: Optional[Clock] = None, blink_time: float = 0.15):
        self._on_event = on_event
        self._clock = clock or SYSTEM_CLOCK
        self._config = gpio_config
        self.blink_time = float(blink_time)
        self.bounce_time = float(gpio_config.bounce_time or 0.0)
        self.hold_period = 1.0 / gpio_config.hold_rate
        self.callback_errors = 0
        self.ignored_bounces = 0
        self._lock = threading.RLock()
        self._closed = False
        self._devices: List[object] = []
        self.buttons: Dict[str, object] = {}
        self.leds: Dict[str, object] = {}
        self.delete_button = None
        self.status_led = None
        self._last_edge: Dict[str, float] = {}
        self._last_press: Dict[str, float] = {}  # class -> its last accepted press
        self._next_repeat: Dict[str, float] = {}  # held class -> when its next capture is due
        self._delete_pressed_at: Optional[float] = None
        self._delete_armed: Optional[str] = None  # None, "delete" or "clear"
        self._clear_armed_at = 0.0
        self._prediction: Optional[str] = None
        self._status_on = False
        self._blinks: Dict[str, float] = {}  # LED key -> when its capture blink ends
        self._owns_factory = pin_factory is None
        self._factory = pin_factory if pin_factory is not None else \
            make_pin_factory(gpio_config.pin_factory)
        try:
            self._build(list(classes))
        except BaseException:
            self.close()
            raise

    # --- construction --------------------------------------------------------------------------
    def _make(self, kind: str, pin: int, role: str, **kwargs):
        try:
            import gpiozero
        except ImportError as exc:
            raise GpioError(f"gpiozero is not installed ({exc}): pip install gpiozero") from exc
        try:
            device = getattr(gpiozero, kind)(pin, pin_factory=self._factory, **kwargs)
        except gpiozero.BadPinFactory as exc:
            raise GpioError(f"no GPIO pin factory could be loaded ({exc}): on a Raspberry Pi "
                            f"install lgpio (`sudo apt install python3-lgpio`, or `pip install "
                            f"lgpio` in the venv); elsewhere set gpio.pin_factory = \"mock\" "
                            f"or give no buttons or LEDs") from exc
        except Exception as exc:
            raise GpioError(f"GPIO {pin} ({role}): {type(exc).__name__}: {exc}") from exc
        self._devices.append(device)
        return device

    def _build(self, classes: List) -> None:
        cfg = self._config
        bounce = self.bounce_time or None
        # tick() does the holds, not gpiozero's hold thread; a short hold_time only keeps
        # close() of a pressed button from waiting out that thread's hold_time (1 s by default)
        idle_hold = dict(hold_time=0.05, hold_repeat=False)
        for c in classes:
            if c.button is not None:
                button = self._make("Button", c.button, f"button of class {c.name!r}",
                                    pull_up=True, bounce_time=bounce, **idle_hold)
                button.when_pressed = self._guarded(self._class_pressed, c.name)
                button.when_released = self._guarded(self._edge, c.name)
                self.buttons[c.name] = button
            if c.led is not None:
                self.leds[c.name] = self._make("LED", c.led, f"LED of class {c.name!r}")
        if cfg.delete_button is not None:
            button = self._make("Button", cfg.delete_button, "delete button", pull_up=True,
                                bounce_time=bounce, **idle_hold)
            button.when_pressed = self._guarded(self._delete_pressed)
            button.when_released = self._guarded(self._delete_released)
            self.delete_button = button
        if cfg.status_led is not None:
            self.status_led = self._make("LED", cfg.status_led, "status LED")

    @property
    def pin_factory(self):
        """The gpiozero pin factory in use (None: gpiozero's default)."""
        return self._factory

    # --- callbacks (gpiozero threads) ----------------------------------------------------------
    def _guarded(self, method, *args):
        def callback():
            if self._closed:
                return
            try:
                method(*args)
            except Exception:
                with self._lock:
                    self.callback_errors += 1
                _log.exception("button callback failed")
        return callback

    def _emit(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:
            with self._lock:
                self.callback_errors += 1
            _log.exception("on_event failed for %r", event)

    def _edge(self, key: str) -> bool:
        """Record an edge; False if it came within bounce_time of the previous one."""
        now = self._clock.now()
        with self._lock:
            last = self._last_edge.get(key)
            self._last_edge[key] = now
            if last is not None and now - last < self.bounce_time:
                self.ignored_bounces += 1
                return False
        return True

    def _class_pressed(self, name: str) -> None:
        if not self._edge(name):
            with self._lock:  # chatter while pressing: still held since the accepted press
                if name in self._last_press:
                    self._next_repeat.setdefault(name, self._last_press[name] + self.hold_period)
            return
        now = self._clock.now()
        with self._lock:
            self._last_press[name] = now
            self._next_repeat[name] = now + self.hold_period
        self._emit(Capture(class_name=name, origin="button"))

    def _delete_pressed(self) -> None:
        if self._edge(_DELETE):
            with self._lock:
                self._delete_pressed_at = self._clock.now()
                self._delete_armed = None

    def _delete_released(self) -> None:
        self._edge(_DELETE)
        with self._lock:
            pressed_at, self._delete_pressed_at = self._delete_pressed_at, None
            self._delete_armed = None
            self._show_status()
        if pressed_at is None:
            return  # a bounce
        held = self._clock.now() - pressed_at
        if held >= self._config.very_long_press:
            self._emit(ClearClass(class_name=None, origin="button"))
        elif held >= self._config.long_press:
            self._emit(DeleteLast(class_name=None, origin="button"))
        else:
            _log.info("delete button tapped (%.2f s): hold %g s to delete the last sample, "
                      "%g s to clear the class", held, self._config.long_press,
                      self._config.very_long_press)

    # --- the loop's tick -----------------------------------------------------------------------
    def tick(self) -> None:
        """Do what is due by ``clock.now()``: one capture per held class button whose repeat
        is due, the end of capture blinks, arming the delete button (and the status LED that
        shows it). The device loop calls this once per frame; cheap when nothing is due."""
        due: List[str] = []
        with self._lock:
            if self._closed:
                return
            now = self._clock.now()
            for name, button in self.buttons.items():
                next_at = self._next_repeat.get(name)
                if next_at is None:
                    continue
                if not button.is_pressed:
                    del self._next_repeat[name]
                elif now >= next_at:
                    # one capture per tick; a tick that comes late skips the repeats it missed
                    missed = int((now - next_at) // self.hold_period)
                    self._next_repeat[name] = next_at + (missed + 1) * self.hold_period
                    due.append(name)
            for key in [k for k, ends in self._blinks.items() if now >= ends]:
                del self._blinks[key]
                if key == _STATUS:
                    self._show_status()
                else:
                    self._apply(self.leds[key], self._desired(key))
            self._arm_delete(now)
        for name in due:
            self._emit(Capture(class_name=name, origin="button"))

    def _arm_delete(self, now: float) -> None:
        pressed_at = self._delete_pressed_at
        if pressed_at is None:
            return
        held = now - pressed_at
        cfg = self._config
        armed = "clear" if held >= cfg.very_long_press else \
            "delete" if held >= cfg.long_press else None
        if armed == "clear" and self._delete_armed != "clear":
            self._clear_armed_at = now
        self._delete_armed = armed
        self._show_status()

    # --- LEDs ----------------------------------------------------------------------------------
    def show_prediction(self, label: Optional[str]) -> None:
        """Light the LED of class ``label`` only (all off for None or ``unknown``).

        Cheap enough to call every frame: only LEDs whose state changes are written; an LED in
        the middle of a capture blink takes the new state when the blink ends.
        """
        with self._lock:
            if self._closed:
                return
            self._prediction = None if label in (None, UNKNOWN) else label
            for name in self.leds:
                if name not in self._blinks:
                    self._apply(self.leds[name], name == self._prediction)

    def set_status(self, on: bool) -> None:
        """The status LED's resting state (e.g. on once the device is ready)."""
        with self._lock:
            self._status_on = bool(on)
            self._show_status()

    def blink_capture(self, name: str) -> bool:
        """Blink class ``name``'s LED, or the status LED if it has none, for ``blink_time``
        seconds (ended by the first :meth:`tick` after that). False: no LED."""
        with self._lock:
            if self._closed:
                return False
            key = name if name in self.leds else _STATUS if self.status_led else None
            if key is None:
                return False
            led = self.leds.get(key, self.status_led)
            self._blinks[key] = self._clock.now() + self.blink_time
            self._apply(led, not self._desired(key))
            return True

    @property
    def blinking(self) -> List[str]:
        """The classes (and ``"status"``) whose LED is in a capture blink now."""
        with self._lock:
            return ["status" if k == _STATUS else k for k in self._blinks]

    def _desired(self, key: str) -> bool:
        """The state LED ``key`` rests in outside a capture blink."""
        if key != _STATUS:
            return key == self._prediction
        if self._delete_armed == "clear":
            return int((self._clock.now() - self._clear_armed_at) // STATUS_BLINK) % 2 == 0
        return self._delete_armed is not None or self._status_on

    def _show_status(self) -> None:
        with self._lock:
            led = self.status_led
            if led is None or self._closed or _STATUS in self._blinks:
                return
            self._apply(led, self._desired(_STATUS))

    @staticmethod
    def _apply(led, on: bool) -> None:
        if bool(led.is_lit) == on:
            return
        if on:
            led.on()
        else:
            led.off()

    # --- closing -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Turn the LEDs off and close every device (and a pin factory it made). Safe twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._blinks.clear()
            devices, self._devices = self._devices[::-1], []
        for device in devices:
            try:
                device.close()
            except Exception as exc:
                _log.debug("closing %r failed: %s", device, exc)
        if self._owns_factory and self._factory is not None:
            try:
                self._factory.close()
            except Exception as exc:
                _log.debug("closing the pin factory failed: %s", exc)

    def __enter__(self) -> "ButtonPanel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.buttons)} buttons, {len(self.leds)} LEDs"
        return f"<ButtonPanel {state}>"
