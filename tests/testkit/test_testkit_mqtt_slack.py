"""MqttCommunicator and SlackCommunicator: events in, requests out, results back."""

from __future__ import annotations

import pytest

from consumers.mqtt import MqttConsumer, topic
from consumers.slack import SlackConsumer, on
from consumers.testing import MqttCommunicator, SlackCommunicator, check_message, mqtt_publish, slack_event
from consumers.testing.slack import _EXTRA


class Thermostat(MqttConsumer):
    results: list

    @topic("rooms/{room}/temperature")
    async def temperature(self, mqtt):
        if float(mqtt.payload) < 18:
            await mqtt.publish(f"rooms/{mqtt.kwargs['room']}/heater", b"on", qos=1,
                               reply_channel=self.channel_name)

    async def result(self, mqtt):
        self.results.append(mqtt.message)


async def test_mqtt_publish_in_requests_out_results_back():
    Thermostat.results = []
    async with MqttCommunicator(Thermostat, "mqtt.rooms") as mqtt:
        received = await mqtt.publish("rooms/kitchen/temperature", b"16.5", retain=True)
        request = await mqtt.receive_publish()
        assert (request["topic"], request["payload"], request["qos"]) == ("rooms/kitchen/heater", b"on", 1)
        result = await mqtt.answer(request)
        await mqtt.publish("rooms/kitchen/temperature", b"21")
        assert await mqtt.receive_nothing()
    assert received["retain"] is True and received["subscription"] == "#"
    assert Thermostat.results == [result]
    assert result == {"type": "mqtt.result", "id": request["id"], "request": "mqtt.publish", "ok": True,
                      "error": None, "topic": "rooms/kitchen/heater"}


def test_built_messages_are_valid():
    check_message(mqtt_publish("a/b", {"json": True}, properties={"content_type": "application/json"}))
    for mtype in _EXTRA:
        check_message(slack_event(mtype))
    with pytest.raises(ValueError, match="not an inbound Slack message type"):
        slack_event("slack.send")


class Greeter(SlackConsumer):
    results: list

    async def on_join(self, ctx):
        await ctx.say(f"welcome <@{ctx.user}>", id="greet-1", reply_channel=self.channel_name)

    async def on_leave(self, ctx):
        await ctx.say(f"bye <@{ctx.user}>")

    async def on_reaction(self, ctx):
        if ctx.message["type"] == "slack.reaction_added":
            await ctx.react(ctx.message["reaction"])

    @on("slack.message", text=r"^ping$")
    async def ping(self, ctx):
        await ctx.reply_in_thread("pong")

    async def slack_result(self, ctx):
        self.results.append(ctx.message)


async def test_slack_events_in_sends_out_results_back():
    Greeter.results = []
    async with SlackCommunicator(Greeter) as slack:
        await slack.join("C1", "U1")
        welcome = await slack.receive_send()
        assert welcome["text"] == "welcome <@U1>" and welcome["channel"] == "C1"
        result = await slack.answer(welcome)
        await slack.leave("C1", "U1")
        assert (await slack.receive_send())["text"] == "bye <@U1>"
        await slack.reaction("tada", ts="1.1", channel="C1")
        assert await slack.receive_send() == {"type": "slack.send", "action": "react", "channel": "C1",
                                              "ts": "1.1", "name": "tada"}
        await slack.reaction("tada", ts="1.1", channel="C1", removed=True)
        ping = await slack.message("ping", channel="C2")
        assert await slack.receive_send() == {"type": "slack.send", "action": "post", "channel": "C2",
                                              "text": "pong", "thread_ts": ping["ts"]}
        await slack.message("not a ping")
        assert await slack.receive_nothing()
    assert Greeter.results == [result]
    assert result["ok"] and result["id"] == "greet-1" and result["action"] == "post"
