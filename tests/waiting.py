"""The one way tests wait for another thread or process: until a condition holds, or give up.

::

    from waiting import TIMEOUT, wait_until

    assert wait_until(lambda: device.counters.frames >= 3)      # polled every 5 ms
    assert wait_until(lambda: len(messages) > 2, condition=cond)  # woken by cond.notify_all()

``timeout`` is only an upper bound for calling it a failure (a stuck thread, a broker that never
answers); no test asserts how long anything took. Time inside the device comes from a
:class:`~edge_classifier.core.clock.FakeClock` instead, which tests advance by hand.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

TIMEOUT = 10.0  # seconds before a wait counts as failed; generous for a loaded 2-core machine
POLL = 0.005


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT,
               condition: Optional[threading.Condition] = None, poll: float = POLL) -> bool:
    """True as soon as ``predicate()`` is true; False if it is still false after ``timeout``.

    With ``condition`` the predicate is evaluated holding it and re-evaluated whenever it is
    notified (no polling); otherwise it is polled every ``poll`` seconds.
    """
    if condition is not None:
        with condition:
            return bool(condition.wait_for(predicate, timeout))
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bool(predicate())
        time.sleep(min(poll, remaining))  # polling another thread's progress, not a delay
    return True
