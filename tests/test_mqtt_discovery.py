"""Home Assistant device discovery: the payload, its bounds, component removal, and re-sending it
when Home Assistant comes online (the last ones against a real mosquitto)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from mosquitto import (BASE, STATS, LogRecorder, Observer, mqtt_config, publisher_factory,
                       running_broker)

from edge_classifier.comms.commands import parse_command
from edge_classifier.comms.discovery import (DEFAULT_MAX_BUTTONS, MAX_DISCOVERY_BYTES,
                                             DiscoveryTracker, Topics, component_key,
                                             discovery_payload, max_buttons_for, to_json)
from edge_classifier.comms.events import Capture, Snapshot

broker = pytest.fixture(running_broker, name="broker")
publishers = pytest.fixture(publisher_factory, name="publishers")

DISCOVERY = "homeassistant/device/dev1/config"
# MQTT_ATTRIBUTES_BLOCKED in homeassistant/components/mqtt/entity.py: attribute keys Home
# Assistant drops from what json_attributes_topic/json_attributes_template give it.
HA_BLOCKED_ATTRIBUTES = {
    "assumed_state", "available", "device_class", "device_info", "entity_category",
    "entity_picture", "entity_registry_enabled_default", "extra_state_attributes",
    "force_update", "friendly_name", "icon", "should_poll", "state", "supported_features",
    "unique_id", "unit_of_measurement"}


def buttons(cmps):
    return [key for key, c in cmps.items() if key.startswith("capture_") and len(c) > 1]


def test_topics_follow_the_config():
    topics = Topics.from_config(mqtt_config(None, base_topic="home/cam",
                                            discovery_prefix="ha"))
    assert topics.state == "home/cam/state" and topics.result == "home/cam/cmd/result"
    assert topics.discovery == "ha/device/dev1/config" and topics.ha_status == "ha/status"


def test_payload_has_device_origin_availability_and_sensors():
    payload = discovery_payload(mqtt_config(None), ["apple"])
    assert payload["dev"]["ids"] == ["edge_classifier_dev1"] and payload["dev"]["name"] == "dev1"
    assert payload["dev"]["sw"] and payload["o"]["name"] == "edge-classifier"
    assert payload["o"]["support_url"].startswith("https://")
    assert payload["availability"] == [{"topic": f"{BASE}/availability",
                                        "payload_available": "online",
                                        "payload_not_available": "offline"}]
    label, confidence = payload["cmps"]["label"], payload["cmps"]["confidence"]
    assert label["p"] == "sensor" and label["state_topic"] == f"{BASE}/state"
    assert label["json_attributes_topic"] == f"{BASE}/scores"
    assert confidence["p"] == "sensor" and confidence["state_topic"] == f"{BASE}/prediction"
    assert "value_json.confidence" in confidence["value_template"]
    assert confidence["unit_of_measurement"] == "%"
    assert payload["cmps"]["snapshot"] == {"p": "camera", "name": "Snapshot",
                                           "unique_id": "edge_classifier_dev1_snapshot",
                                           "topic": f"{BASE}/snapshot", "qos": 1}


def test_every_component_has_a_platform_and_a_unique_id():
    cmps = discovery_payload(mqtt_config(None, commands=True), ["apple", "pear"])["cmps"]
    ids = [c["unique_id"] for c in cmps.values()]
    assert all(c.get("p") for c in cmps.values()) and len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z0-9_]+", key) for key in cmps)


def test_every_unique_id_starts_with_the_project_and_the_device():
    cmps = discovery_payload(mqtt_config(None, commands=True), ["apple"])["cmps"]
    assert all(c["unique_id"].startswith("edge_classifier_dev1_") for c in cmps.values())


def test_every_component_has_the_qos_not_only_the_device():
    """Home Assistant passes only availability, state and command topics from the device on to
    its components (SHARED_OPTIONS in homeassistant/components/mqtt/schemas.py)."""
    payload = discovery_payload(mqtt_config(None, commands=True, qos=2), ["apple"])
    assert payload["qos"] == 2
    assert {key: c.get("qos") for key, c in payload["cmps"].items()} == {
        key: 2 for key in payload["cmps"]}


@pytest.mark.parametrize("reserved", sorted(HA_BLOCKED_ATTRIBUTES))
def test_scores_are_one_attribute_so_no_class_name_is_blocked(reserved):
    """A class named like a reserved attribute ("state", "icon", ...) would lose its score if
    every class were an attribute of its own: the label's attributes are {"scores": {...}}."""
    label = discovery_payload(mqtt_config(None), [reserved, "apple"])["cmps"]["label"]
    assert label["json_attributes_topic"] == f"{BASE}/scores"
    template = label["json_attributes_template"]
    assert re.fullmatch(r"\{\{ \{'(\w+)': value_json\} \| to_json \}\}", template), template
    keys = set(re.findall(r"'(\w+)':", template))  # the attribute keys Home Assistant gets
    assert keys == {"scores"} and not keys & HA_BLOCKED_ATTRIBUTES


def test_no_buttons_without_commands():
    cmps = discovery_payload(mqtt_config(None, commands=False), ["apple"])["cmps"]
    assert [c["p"] for c in cmps.values()].count("button") == 0


def test_capture_buttons_send_commands_the_parser_accepts():
    cmps = discovery_payload(mqtt_config(None, commands=True), ["red apple", "pear"])["cmps"]
    buttons = {c["name"]: c for c in cmps.values() if c["p"] == "button"}
    assert set(buttons) == {"Capture red apple", "Capture pear", "Take snapshot"}
    press = buttons["Capture red apple"]
    assert press["command_topic"] == f"{BASE}/cmd/capture"
    assert parse_command("capture", press["payload_press"].encode(), 4096) == Capture(
        origin="mqtt", class_name="red apple")
    snap = buttons["Take snapshot"]
    assert snap["command_topic"] == f"{BASE}/cmd/snapshot"
    assert parse_command("snapshot", snap["payload_press"].encode(), 4096) == Snapshot(
        origin="mqtt")


def test_unique_ids_are_stable_across_restarts():
    config = mqtt_config(None, commands=True)
    assert (discovery_payload(config, ["apple", "Äpfel"])
            == discovery_payload(config, ["apple", "Äpfel"]))
    assert component_key("apple") == component_key("apple")


def test_component_keys_are_safe_and_tell_similar_names_apart():
    keys = {component_key(n) for n in ("apple", "Apple", "apple!", "Äpfel", "苹果", "a b")}
    assert len(keys) == 6
    assert all(re.fullmatch(r"capture_[a-z0-9_]+", k) for k in keys)


def test_a_removed_class_is_listed_with_only_its_platform_then_left_out():
    config = mqtt_config(None, commands=True)
    tracker = DiscoveryTracker(config, ["apple", "pear"])
    assert tracker.set_classes(["apple"]) is True
    removal, clean = [json.loads(m) for m in tracker.messages()]
    pear = component_key("pear")
    assert removal["cmps"][pear] == {"p": "button"}
    assert component_key("apple") in removal["cmps"] and pear not in clean["cmps"]
    assert [json.loads(m) for m in tracker.messages()] == [clean]  # removal sent only once


def test_a_class_back_before_the_update_was_sent_is_not_removed():
    tracker = DiscoveryTracker(mqtt_config(None, commands=True), ["apple", "pear"])
    tracker.set_classes(["apple"])
    tracker.set_classes(["apple", "pear"])
    assert tracker.pending_removals == {} and len(tracker.messages()) == 1


def test_renaming_removes_the_old_button_and_adds_the_new_one():
    tracker = DiscoveryTracker(mqtt_config(None, commands=True), ["apple"])
    tracker.set_classes(["green apple"])
    assert tracker.pending_removals == {component_key("apple"): "button"}


# --- bounds -----------------------------------------------------------------------------------
def test_capture_buttons_are_capped_at_max_buttons():
    config = mqtt_config(None, commands=True)
    classes = [f"class {n}" for n in range(1000)]
    tracker = DiscoveryTracker(config, classes, max_buttons=50)
    cmps = json.loads(tracker.messages()[-1])["cmps"]
    assert buttons(cmps) == [component_key(name) for name in classes[:50]]
    assert tracker.without_button == 950 and "take_snapshot" in cmps


def test_the_cap_defaults_to_head_max_classes_then_to_the_default():
    assert max_buttons_for(SimpleNamespace(head=SimpleNamespace(max_classes=7))) == 7
    assert max_buttons_for(SimpleNamespace(head=SimpleNamespace())) == DEFAULT_MAX_BUTTONS
    assert max_buttons_for(SimpleNamespace(head=SimpleNamespace(max_classes=7)), 3) == 3


def test_the_payload_stays_within_its_byte_limit_whatever_the_names():
    longest = ["\U0001F34E" * 63 + chr(0x4E00 + n) for n in range(1000)]  # 4-byte characters
    payload = discovery_payload(mqtt_config(None, commands=True), longest, max_buttons=1000)
    size = len(to_json(payload))
    assert MAX_DISCOVERY_BYTES - 2000 < size <= MAX_DISCOVERY_BYTES
    assert 0 < len(buttons(payload["cmps"])) < 1000


def test_classes_beyond_the_cap_change_nothing():
    tracker = DiscoveryTracker(mqtt_config(None, commands=True), ["a", "b"], max_buttons=2)
    assert tracker.set_classes(["a", "b", "c"]) is False and tracker.without_button == 1
    assert tracker.set_classes(["b"]) is True  # a's button goes; c still has none


def test_a_class_pushed_out_by_the_cap_is_removed():
    tracker = DiscoveryTracker(mqtt_config(None, commands=True), ["a", "b"], max_buttons=2)
    assert tracker.set_classes(["c", "a", "b"]) is True
    removal, clean = [json.loads(m)["cmps"] for m in tracker.messages()]
    assert removal[component_key("b")] == {"p": "button"}
    assert buttons(clean) == [component_key("c"), component_key("a")]


def test_removals_stay_bounded_by_what_was_announced():
    tracker = DiscoveryTracker(mqtt_config(None, commands=True), ["a", "b"], max_buttons=2)
    for n in range(1000):  # renamed over and over while nothing was sent
        tracker.set_classes([f"x{n}", f"y{n}"])
    assert tracker.pending_removals == {component_key("a"): "button",
                                        component_key("b"): "button"}
    removal, clean = [json.loads(m)["cmps"] for m in tracker.messages()]
    assert len(removal) == len(clean) + 2


# --- against the broker ----------------------------------------------------------------------
def test_discovery_is_published_retained_on_connect(broker, publishers):
    pub = publishers(mqtt_config(broker, commands=True))
    pub.set_classes(["apple"])
    pub.start()
    assert pub.wait_for(lambda s: s["connected"], 10)
    with Observer(broker, DISCOVERY) as seen:
        message = seen.wait_for(DISCOVERY)
    assert message.retain is True
    assert json.loads(message.payload) == discovery_payload(pub.config, ["apple"])


def test_discovery_is_sent_again_when_home_assistant_comes_online(broker, publishers):
    with Observer(broker, DISCOVERY) as seen, LogRecorder() as log:
        publishers(mqtt_config(broker)).start()
        seen.wait_for(DISCOVERY)
        after = seen.mark()
        seen.publish("homeassistant/status", "offline")
        seen.publish("homeassistant/status", "online")
        again = seen.wait_for(DISCOVERY, after=after)
        assert again.retain is False  # a live message, not the broker's retained copy
        assert len(seen.matching(DISCOVERY, after=after)) == 1  # "offline" sent nothing
        log.wait_for("Home Assistant is online")


def test_a_custom_discovery_prefix_is_used_for_config_and_status(broker, publishers):
    topic = "ha/device/dev1/config"
    with Observer(broker, topic) as seen:
        publishers(mqtt_config(broker, discovery_prefix="ha")).start()
        seen.wait_for(topic)
        after = seen.mark()
        seen.publish("ha/status", "online")
        seen.wait_for(topic, after=after)


def test_removed_classes_are_removed_from_home_assistant(broker, publishers):
    with Observer(broker, DISCOVERY) as seen:
        pub = publishers(mqtt_config(broker, commands=True))
        pub.set_classes(["apple", "pear"])
        pub.start()
        seen.wait_for(DISCOVERY)
        after = seen.mark()
        pub.set_classes(["apple"])
        removal, clean = [json.loads(m.payload) for m in seen.wait_until(
            lambda m: len(m) >= after + 2)[after:]]
    assert removal["cmps"][component_key("pear")] == {"p": "button"}
    assert component_key("pear") not in clean["cmps"]
    with Observer(broker, DISCOVERY) as late:  # the retained copy is the clean one
        assert json.loads(late.wait_for(DISCOVERY).payload) == clean


def test_no_discovery_when_it_is_disabled(broker, publishers):
    with Observer(broker, "homeassistant/#", f"{BASE}/stats") as seen:
        pub = publishers(mqtt_config(broker, discovery=False)).start()
        pub.set_classes(["apple"])
        pub.publish_stats({"end": True})
        seen.wait_for(f"{BASE}/stats")
        assert seen.matching(DISCOVERY) == []


def test_a_thousand_new_classes_send_a_bounded_amount_of_discovery(broker, publishers):
    """Regression: 1,000 captures of new classes sent 1,018 ever larger retained discovery
    messages (116 MB). Now the buttons stop at the cap and so do the messages."""
    with Observer(broker, DISCOVERY, STATS) as seen, LogRecorder() as log:
        pub = publishers(mqtt_config(broker, commands=True), max_buttons=50).start()
        seen.wait_for(DISCOVERY)
        classes = []
        for n in range(1000):
            classes.append(f"new class {n}")
            pub.set_classes(classes)
        pub.publish_stats({"fence": True})
        seen.wait_for(STATS)  # same QoS, same connection: every discovery message is in
        sent = seen.matching(DISCOVERY)
        assert len(sent) == 1 + 50  # on connect, then one per new button
        assert max(len(m.payload) for m in sent) <= MAX_DISCOVERY_BYTES
        assert sum(len(m.payload) for m in sent) < 1_000_000
        assert len(buttons(json.loads(sent[-1].payload)["cmps"])) == 50
        log.wait_for("950 of 1000 classes have no capture button")
        assert "1 of 51 classes have no capture button" in log.text  # the first one, a warning
