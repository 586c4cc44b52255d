"""Network faults between the publisher and a real mosquitto, made by a TCP proxy
(:mod:`tcp_proxy`): a stalled link (Wi-Fi gone without a FIN), a short stall, connections cut,
no broker at boot, and an exception in every paho callback; paho's network thread dying (and
dying again), and two clients with one client id (mosquitto's silent take-over and MQTT 5's
"Session taken over").

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
from edge_classifier.core.clock import FakeClock

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


# --- paho's network thread dying -------------------------------------------------------------
def test_a_dead_network_thread_is_replaced_by_a_new_client(broker, publishers, capfd):
    """An exception our callback guard lets through (here SystemExit from on_event) ends paho's
    network thread. Regression: MQTT then stayed dead while the process ran on. Now one line is
    logged, a new client connects (counted), and commands work again."""
    events = queue.Queue()

    def on_event(event):
        if event.request_id == "fatal":
            raise SystemExit("on_event called sys.exit()")
        events.put(event)

    with Observer(broker, f"{BASE}/#") as seen, LogRecorder() as log:
        pub = publishers(mqtt_config(broker, commands=True, discovery=False), on_event).start()
        connected(pub)
        pub.publish_state("apple")
        seen.wait_for(STATE, "apple")
        after = seen.mark()
        seen.publish(CMD + "snapshot", json.dumps({"id": "fatal"}))
        record = log.wait_for("paho's network thread stopped", level=40)
        assert "SystemExit: on_event called sys.exit()" in record.getMessage()
        assert "building a new client" in record.getMessage()
        assert pub.wait_for(lambda s: s["network_restarts"] == 1 and s["connected"], TIMEOUT)
        seen.wait_for(AVAILABILITY, "online", after=after)
        seen.wait_for(STATE, "apple", after=after)  # the retained state, sent again
        seen.publish(CMD + "snapshot", json.dumps({"id": "after"}))
        assert events.get(timeout=TIMEOUT).request_id == "after"
        assert not pub.failed and pub.fatal_error is None
        assert pub.stats["fatal_error"] is None
    assert "Traceback" not in capfd.readouterr().err  # one line, not a thread's traceback


@pytest.mark.parametrize("field", ["client_id", "password"])
def test_the_same_death_again_makes_mqtt_fail_for_good(field, broker, publishers, capfd):
    """Regression: a 70,000-character client id (or password) made paho's thread die with
    struct.error packing CONNECT, and the process ran on with MQTT dead and exited 0. Now one
    new client is tried; it dies the same way, so ``failed`` turns true for the loop to exit."""
    from edge_classifier.errors import MqttFatalError
    huge = {"client_id": "c" * 70_000} if field == "client_id" else {
        "username": "alice", "password": "p" * 70_000}
    with LogRecorder() as log:
        pub = publishers(mqtt_config(broker, discovery=False, **huge)).start()
        assert pub.wait_for(lambda s: s["fatal_error"] is not None, TIMEOUT), pub.stats
        assert pub.failed
        message = pub.fatal_error
        assert "with the same error again" in message and "struct.error" in message
        assert "65,535 bytes" in message and "mqtt.client_id" in message
        assert pub.stats["network_restarts"] == 1 and pub.stats["connected"] is False
        with pytest.raises(MqttFatalError, match="MQTT is off"):
            pub.raise_if_failed()
        errors = [r for r in log.records if r.levelno >= 40]
        assert len(errors) == 2  # the first death, then the verdict: one line each
        assert all(len(r.getMessage()) < 600 for r in log.records)  # the id is shortened
        pub.close()  # quick and clean although nothing runs
        assert "p" * 100 not in log.text
    assert "Traceback" not in capfd.readouterr().err


# --- a client id used twice ------------------------------------------------------------------
def test_two_devices_with_one_client_id_are_told_so_and_back_off(broker, publishers):
    """Regression: two devices with the same client id knocked each other off ~every second,
    logged only as "Unspecified error". Each one's clock (fake, never advanced) says every
    connection was dropped at once: after three in a row each logs one error naming the id and
    the fix, counts it, and its reconnect back-off grows to reconnect_max (0.2 s)."""
    with LogRecorder() as log:
        one, two = (publishers(mqtt_config(broker, discovery=False, client_id="twin"),
                               clock=FakeClock()).start() for _ in range(2))
        for pub in (one, two):
            assert pub.wait_for(lambda s: s["client_id_conflicts"] >= 2
                                and s["backoff"] == 0.2, TIMEOUT), pub.stats
        record = log.wait_for("same client id 'twin'", level=40)
        text = record.getMessage()
        assert "mqtt.client_id" in text and "device_id" in text and "backing off" in text
        assert len([r for r in log.records if "same client id" in r.getMessage()
                    and r.levelno >= 40]) <= 2  # once per device, then at DEBUG


def test_a_connection_that_holds_brings_the_back_off_back(broker, publishers):
    clock = FakeClock()
    with LogRecorder() as log:
        one = publishers(mqtt_config(broker, discovery=False, client_id="twin"),
                         clock=clock).start()
        two = publishers(mqtt_config(broker, discovery=False, client_id="twin"),
                         clock=FakeClock()).start()
        assert one.wait_for(lambda s: s["backoff"] == 0.2, TIMEOUT), one.stats
        two.close()
        connected(one)
        clock.advance(600)  # the connection held for ten minutes
        broker.restart()
        log.wait_for("the connection had held; reconnect back-off is 0.05 s again")
        assert one.wait_for(lambda s: s["backoff"] == 0.05 and s["connected"], TIMEOUT)


def test_session_taken_over_is_recognised_at_the_first_drop(broker, proxy, publishers):
    """An MQTT 5 broker that says why (DISCONNECT reason 142): one drop is enough."""
    with LogRecorder() as log:
        pub = publishers(through(proxy), clock=FakeClock()).start()
        connected(pub)
        assert proxy.inject(b"\xe0\x01\x8e") == 1  # DISCONNECT, Session taken over; then cut
        record = log.wait_for("Session taken over (reason 142)", level=40)
        assert "same client id 'edge-classifier-dev1'" in record.getMessage()
        assert pub.wait_for(lambda s: s["client_id_conflicts"] == 1 and s["connected"],
                            TIMEOUT), pub.stats
        assert pub.stats["backoff"] == 0.1  # doubled once from reconnect_min


def test_ordinary_lost_connections_are_not_called_a_conflict(broker, proxy, publishers):
    clock = FakeClock()
    with LogRecorder() as log:
        pub = publishers(through(proxy), clock=clock).start()
        for n in range(1, 5):
            connected(pub)
            clock.advance(60)  # each connection held for a minute
            proxy.cut()
            assert pub.wait_for(lambda s: s["reconnects"] == n and s["connected"], TIMEOUT)
        assert pub.stats["client_id_conflicts"] == 0 and pub.stats["backoff"] == 0.05
        assert "same client id" not in log.text


# --- the verdicts alone (no broker) ----------------------------------------------------------
def test_rebuilding_gives_up_after_the_same_error_or_too_many_in_a_row():
    import struct

    from edge_classifier.comms.mqtt_health import MAX_REBUILDS, ThreadDeaths
    deaths = ThreadDeaths(reconnect_min=1, reconnect_max=4)
    plans = [deaths.died(RuntimeError(f"fault {n}")) for n in range(MAX_REBUILDS + 1)]
    assert [p.delay for p in plans[:-1]] == [1, 2, 4, 4, 4] and not any(p.fatal for p in plans[:-1])
    assert plans[-1].fatal and f"{MAX_REBUILDS + 1} times without connecting" in plans[-1].message
    deaths.connected()  # a connection worked: the same error once more is worth a new client
    error = struct.error("'H' format requires 0 <= number <= 65535")
    assert not deaths.died(error).fatal and deaths.died(error).fatal


def test_a_conflict_takes_three_quick_drops_or_one_session_taken_over():
    from edge_classifier.comms.mqtt_health import ClientIdWatch
    watch = ClientIdWatch("pi", reconnect_min=1, reconnect_max=60)
    verdicts = []
    for now in (0.0, 1.0, 2.0, 3.0):
        watch.connected(now)
        verdicts.append(watch.disconnected(now + 0.5, 128, "Unspecified error"))
    assert [v.conflict for v in verdicts] == [False, False, True, True]
    assert [v.first for v in verdicts] == [False, False, True, False]
    assert [v.backoff for v in verdicts] == [1, 1, 2, 4]
    watch.connected(10.0)
    assert watch.disconnected(100.0, 128, "Unspecified error").recovered  # held 90 s
    watch.connected(100.0)
    taken = watch.disconnected(100.5, 142, "Session taken over")
    assert taken.conflict and taken.first and "'pi'" in taken.message
