"""Network faults between the publisher and a real mosquitto, made by a TCP proxy
(:mod:`tcp_proxy`): a stalled link (Wi-Fi gone without a FIN), a short stall, connections cut,
no broker at boot, and an exception in every paho callback.

A broker restart and a broker that starts after the publisher are in test_mqtt_broker.py; an
exception in ``on_event`` is in test_mqtt_commands.py.
"""

from __future__ import annotations

import functools
import json
import queue
import threading

import pytest
from mosquitto import (AVAILABILITY, BASE, CMD, PREDICTION, RESULT, STATE, STATS, TIMEOUT,
                       LogRecorder, Observer, mqtt_config, publisher_factory, running_broker)
from tcp_proxy import TcpProxy

from edge_classifier.comms.events import Capture
from edge_classifier.comms.mqtt import MqttPublisher

broker = pytest.fixture(running_broker, name="broker")
publishers = pytest.fixture(publisher_factory, name="publishers")

KEEPALIVE = 5
# mosquitto gives up on a silent client after 1.5 x keepalive; 2.0.11 (Debian 12) was measured
# sending the will 11-12 s after the last packet with keepalive 5 (its keep-alive buckets are
# coarse), hence the margin
WILL_WITHIN = 1.5 * KEEPALIVE + 6
# paho sends PINGREQ after keepalive s without hearing from the broker, and gives up after
# another keepalive s (its loop checks about once a second)
NOTICE_WITHIN = 2 * KEEPALIVE + 4


@pytest.fixture
def proxy(broker):
    """A proxy to ``broker``; list it before ``publishers`` so publishers close first."""
    with TcpProxy(broker.port) as running:
        yield running


def through(proxy, **mqtt):
    """A config whose broker is the proxy, keepalive 5 s and fast back-off (0.05..0.2 s)."""
    mqtt.setdefault("discovery", False)
    return mqtt_config(None, broker=proxy.url, keepalive=KEEPALIVE, **mqtt)


def connected(pub, timeout=TIMEOUT):
    assert pub.wait_for(lambda s: s["connected"], timeout), pub.stats


def frames(seen, topic=PREDICTION, after=0):
    return [json.loads(m.payload)["frame"] for m in seen.matching(topic, after=after)]


def publish_frames(publish, count, start=0):
    """Publish ``count`` predictions from a thread; fails if that blocks (TIMEOUT is only an
    upper bound: no duration is asserted)."""
    worker = threading.Thread(target=lambda: [publish({"label": "pear", "frame": frame})
                                              for frame in range(start, start + count)])
    worker.start()
    worker.join(TIMEOUT)
    assert not worker.is_alive(), f"publishing {count} messages blocked"


def paho_thread_alive(pub):
    return any(t.name == f"paho-mqtt-client-{pub.client_id}" and t.is_alive()
               for t in threading.enumerate())


# --- a stalled link ------------------------------------------------------------------------
def test_a_stalled_link_is_detected_and_everything_is_sent_again_after_it(broker, proxy,
                                                                          publishers):
    """Wi-Fi gone without a FIN: publishing never blocks, the broker sends the last will, the
    publisher notices, keeps retrying, and after the link is back publishes ``online`` and the
    retained state again and delivers the QoS 1 messages of the outage, minus the oldest ones
    that overflowed ``max_queued`` (counted in ``stats["dropped"]``)."""
    max_queued, overflow = 10, 5
    with Observer(broker, f"{BASE}/#") as seen:  # straight to the broker, not through the proxy
        pub = publishers(through(proxy, max_queued=max_queued)).start()
        connected(pub)
        pub.publish_state("apple")
        pub.publish_prediction({"label": "apple", "frame": -1})
        seen.wait_for(PREDICTION)  # the link is quiet: everything so far has been delivered

        proxy.stall()
        stalled = seen.mark()
        # 1. the publisher does not know yet: paho takes the messages (and re-sends them later)
        publish_frames(pub.publish_prediction, 100)
        seen.wait_for(AVAILABILITY, "offline", after=stalled, timeout=WILL_WITHIN)
        assert pub.wait_for(lambda s: not s["connected"], NOTICE_WITHIN), pub.stats
        # 2. it knows: at most max_queued wait, the oldest are dropped
        dropped = pub.stats["dropped"]
        publish_frames(pub.publish_prediction, max_queued + overflow, start=100)
        assert pub.stats["dropped"] - dropped == overflow
        assert pub.stats["queued"] == max_queued
        assert proxy.wait_for(lambda p: p.accepted >= 2, TIMEOUT)  # it keeps trying meanwhile

        resumed = seen.mark()
        proxy.resume()
        connected(pub)
        seen.wait_for(AVAILABILITY, "online", after=resumed)
        seen.wait_for(STATE, "apple", after=resumed)  # the retained state, published again
        kept = set(range(100)) | set(range(100 + overflow, 100 + max_queued + overflow))
        seen.wait_until(lambda _: set(frames(seen, after=stalled)) >= kept)
        pub.publish_stats({"fence": True})
        seen.wait_for(STATS, after=resumed)  # same connection, same QoS: all before it is in
        assert set(frames(seen, after=stalled)) == kept  # the 5 oldest of the queue never came
        queued = [f for f in frames(seen, after=stalled) if f >= 100]
        assert queued == sorted(queued)  # the queue is sent in order
        stats = pub.stats
        assert stats["reconnects"] == 1 and stats["queued"] == 0, stats
        assert stats["dropped"] == overflow and stats["callback_errors"] == 0, stats
    with Observer(broker, AVAILABILITY) as late:
        assert late.wait_for(AVAILABILITY).payload == b"online"  # retained, replacing the will


def test_a_short_stall_delays_messages_without_losing_the_connection(broker, proxy,
                                                                     publishers):
    with Observer(broker, f"{BASE}/#") as seen:
        pub = publishers(through(proxy)).start()
        connected(pub)
        pub.publish_prediction({"label": "apple", "frame": -1})
        seen.wait_for(PREDICTION)
        after = seen.mark()
        proxy.stall()
        publish_frames(pub.publish_prediction, 20)
        proxy.resume()
        seen.wait_until(lambda _: len(frames(seen, after=after)) == 20)
        assert frames(seen, after=after) == list(range(20))
        assert seen.matching(AVAILABILITY, after=after) == []  # no will, no new "online"
        stats = pub.stats
        assert stats["connected"] and stats["reconnects"] == 0 and stats["dropped"] == 0, stats
        assert proxy.accepted == 1


# --- connections cut -----------------------------------------------------------------------
def test_every_cut_connection_is_restored_with_state_and_commands(broker, proxy, publishers):
    events = queue.Queue()
    with Observer(broker, f"{BASE}/#") as seen:
        pub = publishers(through(proxy, commands=True), events.put).start()
        connected(pub)
        pub.publish_state("apple")
        seen.wait_for(STATE, "apple")
        for n in range(1, 4):
            after = seen.mark()
            assert proxy.cut() == 1
            # the broker saw the connection drop (the will), then the publisher came back
            seen.wait_until(lambda _: [m.text for m in seen.matching(AVAILABILITY, after=after)]
                            [-2:] == ["offline", "online"])
            seen.wait_for(STATE, "apple", after=after)
            assert pub.wait_for(lambda s: s["reconnects"] == n and s["connected"], TIMEOUT)
            seen.publish(CMD + "capture", json.dumps({"class": "apple", "id": f"after-cut-{n}"}))
            assert events.get(timeout=TIMEOUT) == Capture(
                origin="mqtt", request_id=f"after-cut-{n}", class_name="apple")
        assert proxy.accepted == 4 and pub.stats["callback_errors"] == 0


# --- no broker at boot ---------------------------------------------------------------------
def test_messages_published_before_the_first_connection_follow_online_in_order(broker,
                                                                               publishers):
    with TcpProxy(broker.port, listen=False) as proxy, Observer(broker, f"{BASE}/#") as seen, \
            LogRecorder() as log:
        pub = publishers(through(proxy)).start()
        log.wait_for("connection refused")  # nothing listens yet
        pub.publish_state("apple")
        publish_frames(pub.publish_prediction, 5)
        pub.publish_stats({"frames": 5})
        assert pub.stats["queued"] == 6 and pub.stats["connected"] is False
        proxy.start()
        connected(pub)
        seen.wait_for(STATS)
        topics = [m.topic for m in seen.messages if m.topic != f"{BASE}/scores"]
        assert topics == [AVAILABILITY, STATE, *[PREDICTION] * 5, STATS]
        assert frames(seen) == [0, 1, 2, 3, 4]
        stats = pub.stats
        assert stats["reconnects"] == 0 and stats["queued"] == 0 and stats["dropped"] == 0
        pub.close()  # while the proxy still forwards its "offline"


# --- an exception in every paho callback ---------------------------------------------------
CALLBACKS = ("connect_fail", "connect", "subscribe", "publish", "log", "disconnect", "message")


def fail_once(name):
    """MqttPublisher._on_<name>, raising on its first call only; ``.raised`` is set then."""
    original = getattr(MqttPublisher, f"_on_{name}")
    raised = threading.Event()

    @functools.wraps(original)
    def hook(self, *args):
        if not raised.is_set():
            raised.set()
            raise RuntimeError(f"injected fault in on_{name}")
        return original(self, *args)
    hook.raised = raised
    return hook


def answered(seen, attempts=40, wait=0.25):
    """Send bad commands until one is answered: the publisher is subscribed and handling
    messages. (The first may meet the injected fault; each attempt waits for its answer.)"""
    for attempt in range(attempts):
        after, rid = seen.mark(), f"probe-{attempt}"
        seen.publish(CMD + "launch", json.dumps({"id": rid}))
        try:
            seen.wait_until(lambda _: any(json.loads(m.payload).get("id") == rid
                                          for m in seen.matching(RESULT, after=after)), wait)
            return attempt
        except AssertionError:
            continue
    raise AssertionError(f"no command answered after {attempts} attempts")


@pytest.mark.parametrize("name", CALLBACKS)
def test_an_exception_in_a_paho_callback_is_logged_counted_and_survived(name, broker,
                                                                        publishers,
                                                                        monkeypatch):
    """Refused connects (on_connect_fail), a first connection (on_connect, on_subscribe,
    on_publish, on_log), a cut connection (on_disconnect) and commands (on_message): each
    callback raises once, and paho's network thread carries on; a connection left half set up
    by the fault is replaced after the cut."""
    hook = fail_once(name)
    monkeypatch.setattr(MqttPublisher, f"_on_{name}", hook)
    events = queue.Queue()
    with TcpProxy(broker.port, listen=False) as proxy, LogRecorder() as log, \
            Observer(broker, RESULT) as seen:
        pub = publishers(through(proxy, commands=True), events.put).start()
        log.wait_for("connection refused")  # on_connect_fail (the second time, for its fault)
        proxy.start()
        if name in ("connect", "subscribe", "publish", "log", "connect_fail"):
            assert hook.raised.wait(TIMEOUT)
        if name in ("disconnect", "message", "log", "connect_fail"):
            connected(pub)
        proxy.cut()  # on_disconnect, then a new connection
        answered(seen)
        seen.publish(CMD + "capture", json.dumps({"class": "apple", "id": "works"}))
        assert events.get(timeout=TIMEOUT) == Capture(origin="mqtt", request_id="works",
                                                      class_name="apple")
        assert hook.raised.is_set()
        record = log.wait_for(f"error in on_{name}: RuntimeError: injected fault in on_{name}",
                              level=40)
        assert record.exc_info is not None  # with the traceback
        assert pub.stats["callback_errors"] == 1, pub.stats
        assert paho_thread_alive(pub)
        pub.close()  # while the proxy still forwards its "offline"
