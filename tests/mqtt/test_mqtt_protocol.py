"""The pure translation: filters, matching, decoding, messages both ways."""

from __future__ import annotations

import pytest

from gateways.core.specs import load_schema
from gateways.mqtt import protocol as p
from gateways.mqtt.protocol import Received, Subscription

SCHEMA = load_schema("mqtt")


@pytest.mark.parametrize("topic_filter, problem", [
    ("a/b", None), ("a/+/c", None), ("#", None), ("a/#", None), ("+", None), ("$share/g/a/+", None),
    ("a/#/c", "'#' must be a whole level and the last one"),
    ("a#", "'#' must be a whole level"), ("a/b+", "'+' must be a whole level"),
    ("", "cannot be empty"), ("$share/g", "$share/<group>/<filter>"), ("$share//a", "$share/<group>/<filter>"),
    ("$share/g+/a", "cannot hold + or #"),
])
def test_filter_problem(topic_filter, problem):
    found = p.filter_problem(topic_filter)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


@pytest.mark.parametrize("topic_filter, topic, matches", [
    ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("#", "x/y", True), ("+/+", "a/b", True),
    ("+", "/", False), ("+/+", "/", True), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True), ("$share/g/a/+", "a/b", True), ("$share/g/a/+", "g/a/b", False),
])
def test_topic_matches(topic_filter, topic, matches):
    assert p.topic_matches(topic_filter, topic) is matches


def test_route_takes_the_first_matching_subscription():
    subs = [Subscription("a/b", channel="one"), Subscription("a/#", channel="two")]
    assert p.route(subs, "a/b").channel == "one"
    assert p.route(subs, "a/c").channel == "two"
    assert p.route(subs, "b") is None


def test_qos_2_is_served_at_1():
    assert Subscription("a", qos=2).granted_qos == 1
    assert Subscription("a", qos=0).granted_qos == 0


def test_inbound_message_carries_everything_and_matches_the_schema():
    received = Received("sensors/1", b"\x00\xff", qos=1, retain=True, dup=True,
                        properties={"content_type": "x/y", "correlation_data": b"\x01",
                                    "user_properties": [["k", "v"], ["k", "w"]], "subscription_identifiers": [3]})
    channel, message = p.inbound_message(received, Subscription("sensors/+", channel="devices"), "mqtt.send")
    assert channel == "devices"
    assert message["type"] == "mqtt.publish"
    assert message["payload"] == b"\x00\xff"
    assert (message["qos"], message["retain"], message["dup"]) == (1, True, True)
    assert message["subscription"] == "sensors/+"
    assert message["reply_channel"] == "mqtt.send"
    assert message["properties"]["user_properties"] == [["k", "v"], ["k", "w"]]
    assert SCHEMA.problem(message) is None
    _, other = p.inbound_message(received, Subscription("sensors/+"), "mqtt.send")
    assert other["id"] != message["id"]


def test_unrouted_message_goes_to_the_default_channel_as_bytes():
    channel, message = p.inbound_message(Received("x", b"{}"), None, "mqtt.send")
    assert channel == "mqtt.publish"
    assert message["subscription"] is None and message["payload"] == b"{}"
    assert SCHEMA.problem(message) is None


@pytest.mark.parametrize("decode, payload, value", [
    ("text", "héllo".encode(), "héllo"), ("json", b'{"a": [1, 2.5, null]}', {"a": [1, 2.5, None]}),
    ("bytes", b"\xff", b"\xff"),
])
def test_decoding(decode, payload, value):
    _, message = p.inbound_message(Received("t", payload), Subscription("t", decode=decode), "mqtt.send")
    assert message["payload"] == value
    assert SCHEMA.problem(message) is None


@pytest.mark.parametrize("decode, payload, error", [
    ("text", b"\xff\xfe", "not UTF-8"), ("json", b"{nope", "not JSON"), ("json", b"\xff", "not UTF-8"),
    ("json", b"[" * 5000 + b"]" * 5000, "nested too deep"),
])
def test_undecodable_payload_arrives_raw_with_the_reason(decode, payload, error):
    _, message = p.inbound_message(Received("t", payload, qos=1), Subscription("t", decode=decode), "mqtt.send")
    assert message["type"] == "mqtt.undecodable"
    assert message["payload"] == payload
    assert error in message["error"]
    assert SCHEMA.problem(message) is None


def test_parse_publish_request():
    request = p.parse_request({"type": "mqtt.publish", "topic": "a/b", "payload": "hé", "qos": 2, "retain": True,
                               "properties": {"content_type": "text/plain"}})
    assert request == p.PublishRequest("a/b", "hé".encode(), 2, True, {"content_type": "text/plain"})
    assert p.parse_request({"type": "mqtt.publish", "topic": "a", "payload": None}).payload == b""
    assert p.parse_request({"type": "mqtt.publish", "topic": "a"}).qos == 0


@pytest.mark.parametrize("message, problem", [
    ({"type": "mqtt.publish", "topic": "a/+"}, "wildcards"),
    ({"type": "mqtt.subscribe", "filter": "a/#/b"}, "'#'"),
    ({"type": "mqtt.unsubscribe", "filter": "a+"}, "'+'"),
    ({"type": "mqtt.result", "ok": True}, "not a request"),
])
def test_requests_that_break_mqtt_rules_are_refused_with_the_reason(message, problem):
    with pytest.raises(ValueError, match=problem.replace("+", r"\+")):
        p.parse_request(message)


def test_a_received_message_republishes_as_a_request():
    _, received = p.inbound_message(
        Received("a/b", b"x", qos=1, retain=True, properties={"content_type": "t", "subscription_identifiers": [2]}),
        Subscription("a/+"), "mqtt.send")
    assert SCHEMA.problem(received) is None
    request = p.parse_request({**received, "topic": "c"})
    assert request == p.PublishRequest("c", b"x", 1, True, {"content_type": "t"})
    _, decoded = p.inbound_message(Received("j", b'{"a": 1}'), Subscription("j", decode="json"), "mqtt.send")
    with pytest.raises(ValueError, match="bytes or str, not dict"):
        p.parse_request(decoded)


def test_subscribe_request_defaults():
    request = p.parse_request({"type": "mqtt.subscribe", "filter": "x/+"}, "default.channel")
    assert request.subscription == Subscription("x/+", 1, "default.channel", "bytes")


def test_result_message_echoes_id_and_type_and_matches_the_schema():
    result = p.result_message({"type": "mqtt.publish", "id": "abc"}, True, None, topic="a")
    assert result == {"type": "mqtt.result", "id": "abc", "request": "mqtt.publish", "ok": True, "error": None,
                      "topic": "a"}
    assert SCHEMA.problem(result) is None
    broken = p.result_message({"type": 5, "id": 7}, False, "bad")
    assert broken["id"] is None and broken["request"] is None
    assert SCHEMA.problem(broken) is None


@pytest.mark.parametrize("message", [
    {"type": "mqtt.publish", "topic": "a", "payload": b"x", "qos": 1, "retain": False,
     "properties": {"response_topic": "r", "correlation_data": b"1", "message_expiry": 10,
                    "user_properties": [["a", "b"]], "payload_format": 1}, "reply_channel": "c", "id": "1"},
    {"type": "mqtt.subscribe", "filter": "a/#", "qos": 0, "channel": "x.y", "decode": "json"},
    {"type": "mqtt.unsubscribe", "filter": "a/#"},
])
def test_schema_accepts_consumer_requests(message):
    assert SCHEMA.problem(message) is None


@pytest.mark.parametrize("message, where", [
    ({"type": "mqtt.publish", "topic": "a", "payload": 5}, "payload"),
    ({"type": "mqtt.publish", "topic": "a", "qos": 3}, ""),
    ({"type": "mqtt.publish", "topic": "a", "properties": {"subscription_identifiers": [1]}}, ""),
    ({"type": "mqtt.publish", "payload": b""}, ""),
    ({"type": "mqtt.subscribe", "filter": "a", "channel": "bad!name"}, ""),
    ({"type": "mqtt.unsubscribe"}, "filter"),
    ({"type": "mqtt.nothing"}, "unknown message type"),
])
def test_schema_rejects_bad_requests_with_a_reason(message, where):
    problem = SCHEMA.problem(message)
    assert problem is not None and where in problem
