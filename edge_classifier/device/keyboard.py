"""Keyboard control: single key presses in a terminal, for a Pi without buttons.

::

    keys = KeyboardControl(lambda: store.class_names(), events.put)
    ...                                   # 1-9 capture, d delete, c clear, q quit
    keys.close()                          # the terminal is restored

Keys (case-insensitive):

====  ============================================================================
1-9   ``Capture`` one sample of the N-th class in ``class_names_getter()`` (1 = first)
d     ``DeleteLast(None)``: delete the newest sample of the class captured last
c     ``ClearClass(None)``: delete every sample of the class captured last
q     ``Stop``
====  ============================================================================

Only when ``stream`` is a terminal: a background thread puts it in cbreak mode (keys arrive one
at a time, without echo; Ctrl-C still interrupts) and reads it. The terminal settings are put
back by :meth:`KeyboardControl.close`, when the thread ends for any reason, and at interpreter
exit. The thread only calls ``on_event``; an exception from it is logged and counted in
:attr:`KeyboardControl.callback_errors`, and the thread goes on.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import sys
import termios
import threading
import tty
from typing import Callable, Optional, Sequence

from edge_classifier.comms.events import Capture, ClearClass, DeleteLast, Event, Stop

__all__ = ["KeyboardControl", "HELP"]

_log = logging.getLogger(__name__)

HELP = "keys: 1-9 capture a sample of class N, d delete last sample, c clear class, q quit"


class KeyboardControl:
    """Read single keys from a terminal in a background thread and turn them into events.

    ``class_names_getter()`` is called (from the keyboard thread) on every digit key and must
    return the current class names in order. ``stream`` defaults to ``sys.stdin``; when it is
    not a terminal nothing is started and :attr:`active` is False.
    """

    def __init__(self, class_names_getter: Callable[[], Sequence[str]],
                 on_event: Callable[[Event], None], stream=None):
        self._names = class_names_getter
        self._on_event = on_event
        self._stream = sys.stdin if stream is None else stream
        self._fd: Optional[int] = None
        self._saved = None
        self._lock = threading.Lock()
        self._stop_r: Optional[int] = None
        self._stop_w: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.callback_errors = 0
        self.keys_read = 0
        fd = self._terminal_fd(self._stream)
        if fd is None:
            return
        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        self._stop_r, self._stop_w = os.pipe()
        try:
            tty.setcbreak(fd, termios.TCSANOW)
            atexit.register(self._restore)
            self._thread = threading.Thread(target=self._run, name="edge-classifier-keyboard",
                                            daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _terminal_fd(stream) -> Optional[int]:
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return None  # e.g. pytest's captured stdin
        try:
            return fd if os.isatty(fd) else None
        except OSError:
            return None

    @property
    def active(self) -> bool:
        """True while the reading thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        fd = self._fd
        try:
            while True:
                ready, _, _ = select.select([fd, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                try:
                    data = os.read(fd, 64)
                except OSError:  # the terminal went away (EIO on a hung-up pty)
                    return
                if not data:
                    return
                for char in data.decode("utf-8", "ignore"):
                    self.handle_key(char)
        except Exception:
            _log.exception("keyboard thread failed; keyboard control is off")
        finally:
            self._restore()

    def handle_key(self, key: str) -> Optional[Event]:
        """Turn one key into an event, pass it to ``on_event`` and return it (None: ignored)."""
        self.keys_read += 1
        event = self._event_for(key)
        if event is not None:
            try:
                self._on_event(event)
            except Exception:
                with self._lock:
                    self.callback_errors += 1
                _log.exception("keyboard event handler failed for key %r", key)
        return event

    def _event_for(self, key: str) -> Optional[Event]:
        if "1" <= key <= "9":
            index = int(key) - 1
            try:
                names = list(self._names())
            except Exception:
                with self._lock:
                    self.callback_errors += 1
                _log.exception("cannot get the class names")
                return None
            if index >= len(names):
                _log.info("key %s: there is no class %s (%d classes)", key, key, len(names))
                return None
            return Capture(class_name=names[index], origin="keyboard")
        key = key.lower()
        if key == "d":
            return DeleteLast(class_name=None, origin="keyboard")
        if key == "c":
            return ClearClass(class_name=None, origin="keyboard")
        if key == "q":
            return Stop(origin="keyboard")
        return None

    def _restore(self) -> None:
        with self._lock:
            saved, self._saved = self._saved, None
        if saved is None or self._fd is None:
            return
        try:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)
        except (OSError, termios.error):
            pass  # the terminal is gone; nothing to restore

    def close(self) -> None:
        """Stop the thread and restore the terminal. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._stop_w is not None:
            try:
                os.write(self._stop_w, b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._restore()
        atexit.unregister(self._restore)
        for fd in (self._stop_r, self._stop_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._stop_r = self._stop_w = None

    def __enter__(self) -> "KeyboardControl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<KeyboardControl {'active' if self.active else 'inactive'}>"
