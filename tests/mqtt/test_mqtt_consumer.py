"""The Django side: topic routes with named levels, publish/subscribe helpers, the demo consumer."""

from __future__ import annotations

import pytest
from django.conf import settings

from consumers.mqtt import MqttConsumer, TopicRoute, publish_message, topic
from consumers.testing import MqttCommunicator
from demo.mqtt_consumers import MqttEchoConsumer
from gateways.core.specs import load_schema

SCHEMA = load_schema("mqtt")

if not settings.configured:  # plain-def handlers run through database_sync_to_async
    settings.configure(DATABASES={}, INSTALLED_APPS=[], USE_TZ=True)


@pytest.mark.parametrize("pattern, plain, topic_name, kwargs", [
    ("sensors/{device}/temp", "sensors/+/temp", "sensors/k1/temp", {"device": "k1"}),
    ("sensors/{device}/temp", "sensors/+/temp", "sensors/k1/x/temp", None),
    ("echo/{rest:#}", "echo/#", "echo/a/b", {"rest": "a/b"}),
    ("echo/{rest:#}", "echo/#", "echo", {"rest": ""}),
    ("a/+/{tail:#}", "a/+/#", "a/b/c", {"tail": "c"}),
    ("#", "#", "$SYS/broker", None),
    ("a.b/c", "a.b/c", "aXb/c", None),
])
def test_topic_routes(pattern, plain, topic_name, kwargs):
    route = TopicRoute.compile(pattern)
    assert route.filter == plain
    assert route.match(topic_name) == kwargs


@pytest.mark.parametrize("pattern", ["a/{x:#}/b", "a/#/b", "a/b+", "a/{bad-name}"])
def test_bad_route_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        TopicRoute.compile(pattern)


class Devices(MqttConsumer):
    seen: list = []

    @topic("sensors/{device}/temperature")
    async def temperature(self, mqtt):
        self.seen.append(("temp", mqtt.kwargs["device"], mqtt.payload))
        await mqtt.publish(f"commands/{mqtt.kwargs['device']}", b"ack", qos=1)

    @topic("sensors/#")
    def anything(self, mqtt):  # a plain def runs in a thread
        self.seen.append(("any", mqtt.topic))

    @topic("rpc/{name}")
    async def rpc(self, mqtt):
        assert await mqtt.respond(b"pong")

    @topic("boom")
    async def boom(self, mqtt):
        raise RuntimeError("handler bug")

    @topic("manage/{action}")
    async def manage(self, mqtt):
        if mqtt.kwargs["action"] == "watch":
            await mqtt.subscribe("watched/#", qos=2, channel="mqtt.watched", decode="json",
                                 reply_channel="reply.me")
        else:
            await mqtt.unsubscribe("watched/#")


async def test_first_matching_route_handles_with_named_levels():
    Devices.seen = []
    async with MqttCommunicator(Devices, "devices") as harness:
        await harness.publish("sensors/k7/temperature", b"21.5")
        request = await harness.receive_request()
        await harness.publish("sensors/k7/humidity", b"40")
        await harness.publish("nothing/here", b"")
        assert await harness.receive_nothing()
    assert request == publish_message("commands/k7", b"ack", qos=1)
    assert SCHEMA.problem(request) is None
    assert Devices.seen == [("temp", "k7", b"21.5"), ("any", "sensors/k7/humidity")]
    assert harness.stats["unmatched"] == 1
    assert Devices.topic_filters() == ["sensors/+/temperature", "sensors/#", "rpc/+", "boom", "manage/+"]


async def test_subscribe_and_unsubscribe_requests_match_the_schema():
    async with MqttCommunicator(Devices, "devices") as harness:
        await harness.publish("manage/watch", b"")
        subscribe = await harness.receive_request()
        await harness.publish("manage/stop", b"")
        unsubscribe = await harness.receive_request()
    assert subscribe == {"type": "mqtt.subscribe", "filter": "watched/#", "qos": 2, "decode": "json",
                         "channel": "mqtt.watched", "reply_channel": "reply.me"}
    assert unsubscribe == {"type": "mqtt.unsubscribe", "filter": "watched/#"}
    assert SCHEMA.problem(subscribe) is None and SCHEMA.problem(unsubscribe) is None


async def test_respond_uses_the_response_topic_and_correlation_data():
    async with MqttCommunicator(Devices, "devices") as harness:
        await harness.publish("rpc/ping", b"", properties={"response_topic": "replies/me",
                                                           "correlation_data": b"\x07"})
        request = await harness.receive_request()
    assert request["topic"] == "replies/me"
    assert request["properties"] == {"correlation_data": b"\x07"}
    assert SCHEMA.problem(request) is None


async def test_a_raising_handler_is_counted_and_the_consumer_keeps_going():
    Devices.seen = []
    async with MqttCommunicator(Devices, "devices") as harness:
        await harness.publish("boom", b"")
        await harness.publish("sensors/k1/temperature", b"1")
        with pytest.raises(RuntimeError, match="handler bug"):  # the kit raises the handler's exception
            await harness.receive_request()
        await harness.receive_request()
    assert harness.stats["failed"] == 1
    assert ("temp", "k1", b"1") in Devices.seen


async def test_undecodable_and_results_go_to_their_hooks():
    async with MqttCommunicator(Devices, "devices") as harness:
        await harness.undecodable("t", b"\xff", subscription="t", error="text: not UTF-8")
        await harness.harness.send_to_consumer({"type": "mqtt.result", "id": None, "request": "mqtt.publish",
                                                "ok": False, "error": "nope"})
        assert await harness.receive_nothing()
    assert harness.stats["undecodable"] == 1


async def test_demo_echo_consumer_answers_on_echo_reply_with_payload_qos_and_properties():
    async with MqttCommunicator(MqttEchoConsumer, "mqtt.echo") as harness:
        await harness.publish("echo/x/y", b"\x00hi", qos=1,
                              properties={"content_type": "a/b", "user_properties": [["k", "v"]],
                                          "subscription_identifiers": [1]})
        request = await harness.receive_request()
        await harness.publish("other", b"")
        assert await harness.receive_nothing()
    assert request["topic"] == "echo-reply/x/y"
    assert (request["payload"], request["qos"]) == (b"\x00hi", 1)
    assert request["properties"] == {"content_type": "a/b", "user_properties": [["k", "v"]]}
    assert SCHEMA.problem(request) is None
