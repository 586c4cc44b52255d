"""The MQTT publisher against a real mosquitto: availability, the last will, reconnecting, the
offline queue, state and rate limits, authentication, ACLs and TLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from mosquitto import (AVAILABILITY, BASE, PREDICTION, STATE, STATS, TIMEOUT, LogRecorder,
                       Mosquitto, Observer, mqtt_config, publisher_factory, running_broker)

from edge_classifier.core.clock import FakeClock
from edge_classifier.errors import ConfigError

broker = pytest.fixture(running_broker, name="broker")
publishers = pytest.fixture(publisher_factory, name="publishers")

PASSWORD = "s3cret-Pa55"


def connected(pub, timeout=TIMEOUT):
    assert pub.wait_for(lambda s: s["connected"], timeout), pub.stats


def disconnected(pub, timeout=TIMEOUT):
    assert pub.wait_for(lambda s: not s["connected"], timeout), pub.stats


def test_online_is_published_retained_on_connect(broker, publishers):
    with Observer(broker, AVAILABILITY) as live:
        pub = publishers(mqtt_config(broker, discovery=False)).start()
        live.wait_for(AVAILABILITY, "online")
    with Observer(broker, AVAILABILITY) as late:
        assert late.wait_for(AVAILABILITY).payload == b"online"
        assert late.messages[0].retain is True
    assert pub.stats["reconnects"] == 0 and pub.stats["connected"] is True


def test_offline_is_published_retained_on_a_clean_stop(broker, publishers):
    with Observer(broker, AVAILABILITY) as live:
        pub = publishers(mqtt_config(broker, discovery=False)).start()
        live.wait_for(AVAILABILITY, "online")
        pub.stop()
        live.wait_for(AVAILABILITY, "offline")
    assert pub.stats["connected"] is False
    with Observer(broker, AVAILABILITY) as late:
        message = late.wait_for(AVAILABILITY)
        assert (message.payload, message.retain) == (b"offline", True)


CHILD = textwrap.dedent("""
    import sys, threading
    from edge_classifier.config import Config, MqttConfig
    from edge_classifier.comms.mqtt import make_publisher
    config = Config(device_id="dev1", mqtt=MqttConfig(broker={url!r}, keepalive=5,
                                                      discovery=False))
    publisher = make_publisher(config, on_event=None).start()
    publisher.wait_for(lambda stats: stats["connected"], 20)
    print("connected", flush=True)
    threading.Event().wait()  # until killed
""")


def test_last_will_offline_arrives_after_the_process_is_killed(broker):
    with Observer(broker, AVAILABILITY) as seen:
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(url=broker.url)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "connected"
            seen.wait_for(AVAILABILITY, "online")
            after = seen.mark()
            os.kill(child.pid, signal.SIGKILL)
            # keepalive 5 s: the broker sends the will 1.5 x 5 s after the last packet, give or
            # take its coarse keep-alive buckets (11-12 s seen, test_mqtt_faults); 20 s: a bound
            will = seen.wait_for(AVAILABILITY, "offline", after=after, timeout=20)
            assert will.retain is False  # delivered live; the broker also retains it
        finally:
            child.kill()
            child.wait(TIMEOUT)
    with Observer(broker, AVAILABILITY) as late:
        assert late.wait_for(AVAILABILITY).payload == b"offline"


def test_connects_when_the_broker_starts_after_the_publisher(tmp_path, publishers):
    later = Mosquitto(tmp_path)
    pub = publishers(mqtt_config(later, discovery=False))
    with LogRecorder() as log:
        pub.start()
        pub.publish_state("apple")  # returns at once; remembered until connected
        log.wait_for("connection refused")
        assert "connection refused" in pub.stats["last_error"]
        with later:
            connected(pub)
            with Observer(later, f"{BASE}/#") as seen:  # live or retained: it may subscribe
                seen.wait_for(AVAILABILITY, "online")   # before or after they are published
                seen.wait_for(STATE, "apple")
            with Observer(later, f"{BASE}/#") as late:  # the broker has both by now
                assert late.wait_for(AVAILABILITY, "online").retain
                assert late.wait_for(STATE, "apple").retain
            # while the broker still runs: once it stops, paho reports the lost connection
            assert pub.stats["reconnects"] == 0 and pub.stats["last_error"] is None


def test_reconnects_after_a_broker_restart_and_sends_what_waited(tmp_path, publishers):
    with Mosquitto(tmp_path, persistence=True) as server:
        seen = Observer(server, f"{BASE}/#", persistent=True)  # keeps its session over restarts
        try:
            pub = publishers(mqtt_config(server, discovery=False)).start()
            pub.publish_state("apple")
            seen.wait_for(STATE, "apple")
            after = seen.mark()
            server.stop()
            disconnected(pub)
            for i in range(3):
                pub.publish_prediction({"label": "pear", "frame": i})
            pub.publish_state("pear")
            assert pub.stats["queued"] == 3
            server.start()
            connected(pub)
            seen.wait_for(AVAILABILITY, "online", retain=False, after=after)
            seen.wait_for(STATE, "pear", retain=False, after=after)
            seen.wait_until(lambda _: len(seen.matching(PREDICTION, after=after)) == 3)
            frames = [json.loads(m.payload)["frame"] for m in seen.matching(PREDICTION)]
            assert frames == [0, 1, 2]
            assert pub.stats["reconnects"] == 1
            assert pub.stats["queued"] == 0 and pub.stats["dropped"] == 0
        finally:
            seen.close()


def test_the_oldest_queued_messages_are_dropped_when_the_queue_is_full(tmp_path, publishers):
    with Mosquitto(tmp_path, persistence=True) as server:
        seen = Observer(server, STATS, persistent=True)
        try:
            pub = publishers(mqtt_config(server, discovery=False, max_queued=3)).start()
            pub.publish_stats({"n": -1})
            seen.wait_for(STATS)
            server.stop()
            disconnected(pub)
            for i in range(5):
                pub.publish_stats({"n": i})
            assert pub.stats["dropped"] == 2 and pub.stats["queued"] == 3
            server.start()
            seen.wait_until(lambda m: len(m) == 4)
            assert [json.loads(m.payload)["n"] for m in seen.messages] == [-1, 2, 3, 4]
        finally:
            seen.close()


def test_what_paho_itself_does_with_publishes_while_disconnected(tmp_path):
    """The behaviour the publisher is built on (paho 2.x): while disconnected, publish() returns
    MQTT_ERR_NO_CONN; QoS 1 messages are kept without bound and sent after reconnecting, after
    what on_connect publishes; QoS 0 messages are lost."""
    import paho.mqtt.client as paho
    with Mosquitto(tmp_path, persistence=True) as server:
        seen = Observer(server, "t/#", persistent=True)
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="raw",
                             protocol=paho.MQTTv5)
        gone = threading.Event()
        client.on_connect = lambda c, *args: c.publish("t/connect", "hello", qos=1)
        client.on_disconnect = lambda *args: gone.set()
        client.reconnect_delay_set(0.05, 0.2)
        client.connect_async("127.0.0.1", server.port)
        client.loop_start()
        try:
            seen.wait_for("t/connect")
            after = seen.mark()
            server.stop()
            assert gone.wait(TIMEOUT)
            assert client.publish("t/q1", "kept", qos=1).rc == paho.MQTT_ERR_NO_CONN
            assert client.publish("t/q0", "lost", qos=0).rc == paho.MQTT_ERR_NO_CONN
            server.start()
            seen.wait_for("t/q1", "kept", after=after)
            assert [m.topic for m in seen.messages[after:]] == ["t/connect", "t/q1"]
        finally:
            client.disconnect()
            client.loop_stop()
            seen.close()


def test_state_is_published_only_when_it_changes(broker, publishers):
    with Observer(broker, STATE, STATS) as seen:
        pub = publishers(mqtt_config(broker, discovery=False)).start()
        connected(pub)  # before that, only the newest state is kept (and sent on connect)
        for label in ("apple", "apple", "apple", "pear", "pear", "apple"):
            pub.publish_state(label)
        pub.publish_stats({"end": True})
        seen.wait_for(STATS)  # same QoS, same connection: everything before it has arrived
        assert [m.text for m in seen.matching(STATE)] == ["apple", "pear", "apple"]


def test_predictions_are_rate_limited_by_the_injected_clock(broker, publishers):
    clock = FakeClock()
    with Observer(broker, PREDICTION, STATS) as seen:
        pub = publishers(mqtt_config(broker, discovery=False, prediction_interval=2.0),
                         clock=clock).start()
        sent = []
        for step in range(10):  # 0, 0.5, ... 4.5 s
            sent.append(pub.publish_prediction({"label": "apple", "frame": step}))
            clock.advance(0.5)
        pub.publish_stats({"end": True})
        seen.wait_for(STATS)  # same QoS, same connection: everything before it has arrived
        frames = [json.loads(m.payload)["frame"] for m in seen.matching(PREDICTION)]
        assert frames == [0, 4, 8] and sent.count(True) == 3
        assert pub.stats["rate_limited"] == 7


def test_scores_are_published_retained_with_each_prediction(broker, publishers):
    with Observer(broker, f"{BASE}/scores") as seen:
        pub = publishers(mqtt_config(broker, discovery=False)).start()
        pub.publish_prediction({"label": "apple", "scores": {"apple": 0.75, "pear": 0.25}})
        assert json.loads(seen.wait_for(f"{BASE}/scores").payload) == {"apple": 0.75,
                                                                      "pear": 0.25}
    with Observer(broker, f"{BASE}/scores") as late:
        assert late.wait_for(f"{BASE}/scores").retain is True


@pytest.fixture
def secured(tmp_path):
    acl = ("user alice\n"
           "topic readwrite edge_classifier/#\n"
           "topic read homeassistant/status\n")  # no write to homeassistant/device/...
    with Mosquitto(tmp_path, users={"alice": PASSWORD}, acl=acl) as server:
        yield server


def test_password_authentication_from_a_password_file(secured, publishers, tmp_path):
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(PASSWORD + "\n")
    config = mqtt_config(secured, username="alice", password_file=str(password_file),
                         discovery=False)
    with LogRecorder() as log, Observer(secured, AVAILABILITY, username="alice",
                                        password=PASSWORD) as seen:
        publishers(config).start()
        seen.wait_for(AVAILABILITY, "online")
    assert PASSWORD not in log.text


def test_credentials_in_the_broker_url_work_and_are_never_logged(secured, publishers):
    url = f"mqtt://alice:{PASSWORD}@127.0.0.1:{secured.port}"
    with LogRecorder() as log, Observer(secured, AVAILABILITY, username="alice",
                                        password=PASSWORD) as seen:
        pub = publishers(mqtt_config(None, broker=url, discovery=False)).start()
        seen.wait_for(AVAILABILITY, "online")
        pub.close()
        seen.wait_for(AVAILABILITY, "offline")
    assert "alice" in log.text and PASSWORD not in log.text


def test_a_wrong_password_is_reported_and_retried_without_showing_it(secured, publishers):
    wrong = "not-the-Pa55word"
    pub = publishers(mqtt_config(secured, username="alice", password=wrong, discovery=False))
    with LogRecorder() as log:
        pub.start()
        record = log.wait_for("refused the connection", level=40)
        assert "Not authorized" in record.getMessage() and "username" in record.getMessage()
        assert "refused the connection" in pub.stats["last_error"]
        log.wait_for("Sending CONNECT", count=3)  # it keeps trying, with back-off
    assert pub.stats["connected"] is False
    assert wrong not in log.text and wrong not in str(pub.stats)


def test_a_topic_denied_by_the_acl_is_reported(secured, publishers):
    config = mqtt_config(secured, username="alice", password=PASSWORD)  # discovery on
    with LogRecorder() as log:
        pub = publishers(config).start()
        record = log.wait_for("refused the message on 'homeassistant/device/dev1/config'")
        assert "Not authorized" in record.getMessage() and "ACL" in record.getMessage()
    assert pub.stats["refused"] >= 1 and pub.stats["connected"] is True


def test_an_unreadable_password_file_is_a_config_error(broker, publishers, tmp_path):
    with pytest.raises(ConfigError, match="mqtt.password_file"):
        publishers(mqtt_config(broker, username="a", password_file=str(tmp_path / "none")))


# --- TLS -------------------------------------------------------------------------------------
def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA and, signed by it, certificates for the broker (127.0.0.1), a broker with
    another name, and a client: {name: (certfile, keyfile)}; "ca" is the CA's."""
    folder = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = (folder / "ca.crt", folder / "ca.key")
    _openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=edge-classifier test CA",
             "-keyout", str(ca[1]), "-out", str(ca[0]))
    made = {"ca": ca}
    for name, extensions in (("broker", "subjectAltName=IP:127.0.0.1"),
                             ("elsewhere", "subjectAltName=DNS:elsewhere.invalid"),
                             ("client", "extendedKeyUsage=clientAuth")):
        cert, key, csr = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
        ext = folder / f"{name}.ext"
        ext.write_text(f"basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid,issuer\n"
                       f"{extensions}\n")
        _openssl("req", *ec, "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                 "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
        made[name] = (cert, key)
    return made


def test_tls_with_a_ca_file_connects(tmp_path, pki, publishers):
    with Mosquitto(tmp_path, tls=pki["broker"]) as server:
        pub = publishers(mqtt_config(server, discovery=False, tls_ca=str(pki["ca"][0])))
        connected(pub.start())


def test_a_tls_verification_failure_is_reported(tmp_path, pki, publishers):
    with Mosquitto(tmp_path, tls=pki["broker"]) as server, LogRecorder() as log:
        pub = publishers(mqtt_config(server, discovery=False)).start()  # system CAs only
        record = log.wait_for("TLS certificate verification failed", level=40)
        assert "unable to get local issuer" in record.getMessage()
        assert pub.stats["connected"] is False


def test_a_host_name_mismatch_is_reported_unless_tls_insecure(tmp_path, pki, publishers):
    with Mosquitto(tmp_path, tls=pki["elsewhere"]) as server, LogRecorder() as log:
        strict = publishers(mqtt_config(server, discovery=False, tls_ca=str(pki["ca"][0])))
        strict.start()
        assert "mismatch" in log.wait_for("TLS certificate verification failed").getMessage()
        strict.close()
        loose = publishers(mqtt_config(server, discovery=False, tls_ca=str(pki["ca"][0]),
                                       tls_insecure=True))
        connected(loose.start())


def test_a_client_certificate_is_presented(tmp_path, pki, publishers):
    ca = str(pki["ca"][0])
    with Mosquitto(tmp_path, tls=(*pki["broker"], ca)) as server, LogRecorder() as log:
        cert, key = pki["client"]
        pub = publishers(mqtt_config(server, discovery=False, tls_ca=ca, tls_cert=str(cert),
                                     tls_key=str(key)))
        connected(pub.start())
        publishers(mqtt_config(server, discovery=False, tls_ca=ca, client_id="no-cert")).start()
        record = log.wait_for("closed the connection before accepting it", level=40)
        assert "certificate required" in record.getMessage()  # the broker insists on one


def test_retained_scores_change_at_most_once_a_second_with_one_label(broker, publishers):
    """At one prediction per frame the scores topic (Home Assistant's attributes, which its
    recorder stores on every change) must not follow every frame: with the same label new
    scores go out once a second; a new label takes its scores at once; the newest scores are
    what a reconnect sends."""
    clock = FakeClock()
    with Observer(broker, f"{BASE}/scores", STATS) as seen:
        pub = publishers(mqtt_config(broker, discovery=False, prediction_interval=0.0),
                         clock=clock).start()
        assert pub.wait_for(lambda s: s["connected"], TIMEOUT)
        for step in range(8):  # 8 frames in 0.875 s, one label
            pub.publish_prediction({"label": "apple",
                                    "scores": {"apple": 0.5 + step / 100, "pear": 0.5 - step / 100}})
            clock.advance(0.125)
        pub.publish_prediction({"label": "apple", "scores": {"apple": 0.7, "pear": 0.3}})  # t=1.0
        pub.publish_prediction({"label": "pear", "scores": {"apple": 0.2, "pear": 0.8}})
        pub.publish_prediction({"label": "pear", "scores": {"apple": 0.1, "pear": 0.9}})
        pub.publish_stats({"end": True})
        seen.wait_for(STATS)
        sent = [json.loads(m.payload)["apple"] for m in seen.matching(f"{BASE}/scores")]
        assert sent == [0.5, 0.7, 0.2]
        assert pub.stats["rate_limited"] == 0  # every prediction itself went out
