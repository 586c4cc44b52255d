"""The live updates of the web studio are coalesced: whatever the loop's frame rate, the pages get
at most ``max(5, web.stream_fps)`` prediction updates a second, each the newest prediction at its
time, on a steady beat, and the loop's thread schedules at most one wake-up per update.

The server's asyncio loop runs on virtual time (``time()`` is a number the test moves), so the
beat is checked exactly and nothing waits on the wall clock."""

from __future__ import annotations

import asyncio

import pytest

from edge_classifier.comms.web.transport import LIVE_PER_SECOND, WebTransport
from edge_classifier.config import ClassConfig, Config, WebConfig
from edge_classifier.core.clock import FakeClock


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock is ``self.now``: timers fire when the test has moved it past
    their time and runs the loop once."""

    def __init__(self):
        super().__init__()
        self.now = 0.0
        self.wakes = 0  # call_soon_threadsafe calls: the loop thread's wake-ups

    def time(self) -> float:
        return self.now

    def call_soon_threadsafe(self, callback, *args, context=None):
        self.wakes += 1
        return super().call_soon_threadsafe(callback, *args, context=context)

    def run_ready(self) -> None:
        """Run what is due at ``now`` (callbacks, and timers whose time has come)."""
        self.run_until_complete(asyncio.sleep(0))
        self.run_until_complete(asyncio.sleep(0))


@pytest.fixture
def live():
    made = []

    def make(stream_fps: float):
        config = Config(device_id="live", keyboard="off", classes=(ClassConfig("cat"),),
                        web=WebConfig(listen="127.0.0.1:0", stream_fps=stream_fps,
                                      inbox_size=0))
        transport = WebTransport(config, post=lambda event: None, store=_NoStore(),
                                 clock=FakeClock())
        loop = VirtualTimeLoop()
        transport._aloop = loop
        transport.changed = asyncio.Event()
        transport.counts["web_clients"] = 1  # one page watching
        made.append((transport, loop))
        return transport, loop

    yield make
    for transport, loop in made:
        transport.close()
        loop.close()


def run_frames(transport, loop, fps: float, seconds: float):
    """The device loop publishing at ``fps`` for ``seconds`` of virtual time; returns the
    updates the pages were woken for, as (virtual time, frame number of the prediction)."""
    updates, seen = [], transport.versions["prediction"]
    frames = int(round(fps * seconds))
    for frame in range(frames):
        loop.now = frame / fps
        transport.publish_prediction({"label": "cat", "scores": {"cat": 1.0}, "frame": frame})
        loop.run_ready()
        if transport.versions["prediction"] != seen:
            seen = transport.versions["prediction"]
            updates.append((loop.now, transport.prediction["frame"]))
    return updates


@pytest.mark.parametrize("stream_fps, rate", [(5.0, LIVE_PER_SECOND), (2.0, LIVE_PER_SECOND),
                                              (12.0, 12.0)])
def test_live_updates_are_coalesced_to_the_rate_on_a_steady_beat(live, stream_fps, rate):
    transport, loop = live(stream_fps)
    updates = run_frames(transport, loop, fps=60.0, seconds=4.0)
    # 240 frames in 4 s: one update per period (the first at once), not one per frame
    assert abs(len(updates) - 4.0 * rate) <= 1, updates
    # update i comes on the beat i / rate (seen at a frame from then on, within one frame:
    # rounding may put the beat a hair after a frame): no drift
    period = 1 / rate
    assert all(i * period - 1e-9 <= t <= i * period + 1 / 60 + 1e-9
               for i, (t, _) in enumerate(updates)), updates
    # each update carries the newest prediction at its time (the frame just published)
    assert all(frame == round(t * 60.0) for t, frame in updates), updates
    # the loop's thread woke the server's loop at most once per update (plus the first)
    assert loop.wakes <= len(updates) + 1


def test_a_slow_loop_gets_every_prediction_at_once(live):
    transport, loop = live(5.0)
    updates = run_frames(transport, loop, fps=2.0, seconds=5.0)  # slower than the rate
    assert [frame for _, frame in updates] == list(range(10))
    assert [t for t, _ in updates] == [i / 2.0 for i in range(10)]  # none delayed


def test_no_page_watching_wakes_nothing(live):
    transport, loop = live(5.0)
    transport.counts["web_clients"] = 0
    assert run_frames(transport, loop, fps=60.0, seconds=1.0) == []
    assert loop.wakes == 0


class _NoStore:
    """The part of the sample store the catalogue reads: no classes yet."""

    def counts(self):
        return {}
