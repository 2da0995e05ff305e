"""consumers.send helpers and the consumers' contexts against real gateways on real Redis:
the message id back at once, or the gateway's result with wait=True."""

from __future__ import annotations

import asyncio
import types
import uuid

import pytest
import websockets
import yaml

from consumers.email import EmailContext
from consumers.mqtt import MqttContext
from consumers.send import (
    async_mqtt_publish,
    async_slack_send,
    async_websocket_group_send,
    mqtt_publish,
    slack_send,
    websocket_group_send,
)
from consumers.slack import SlackContext
from consumers.testing import email_receive, mqtt_publish as inbound_mqtt, slack_event
from django_stack import django_settings_for
from gateways.core.config import load_config
from gateways.core.layer import build_layer, close_layer
from servers import free_port, listening_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SLACK_OUT = "slack.outbound-test"


def consumer_on(config) -> types.SimpleNamespace:
    """What a context needs of its consumer: the layer (the one the project's worker would have)."""
    return types.SimpleNamespace(channel_layer=build_layer(load_config(config).layer))


# --------------------------------------------------------------------------
# Slack


@pytest.fixture
def slack_gateway(redis_server, tmp_path):
    from consumers.testing.slack_standin import SlackStandIn
    from slack.stack import start_gateway, write_config

    standin = SlackStandIn().start()
    # Not the default outbound channel: the helpers must take it from the YAML.
    config = write_config(tmp_path, redis_server.url, standin, f"s{uuid.uuid4().hex[:8]}",
                          send_channel=SLACK_OUT)
    daemon = start_gateway(config, standin, connections=1)
    with django_settings_for(config):
        yield config, standin
    daemon.stop()
    standin.stop()


def test_slack_send_sync_returns_the_id_or_the_result(slack_gateway):
    _config, standin = slack_gateway
    message_id = slack_send("post", channel="C0SEND", text="fire and forget")
    assert isinstance(message_id, str) and message_id
    standin.wait_call("chat.postMessage", channel="C0SEND", text="fire and forget")

    result = slack_send("post", channel="C0SEND", text="waited", wait=True, timeout=20)
    assert (result["type"], result["action"], result["ok"]) == ("slack.result", "post", True)
    assert result["response"]["ts"]
    standin.fail_next("chat.postMessage", "channel_not_found")
    failed = slack_send("post", channel="C0GONE", text="x", wait=True, timeout=20)
    assert (failed["ok"], failed["error"]) == (False, "channel_not_found")


async def test_slack_async_helper_and_context_wait_for_results(slack_gateway):
    config, standin = slack_gateway
    result = await async_slack_send("react", channel="C0SEND", ts="1.2", name="eyes", wait=True, timeout=20)
    assert (result["action"], result["ok"]) == ("react", True)

    context = SlackContext(consumer_on(config), slack_event(channel="C0CTX", ts="9.9", reply_channel=SLACK_OUT))
    result = await context.reply_in_thread("in thread", wait=True, timeout=20)
    assert result["ok"] and result["type"] == "slack.result"
    call = standin.wait_call("chat.postMessage", channel="C0CTX", text="in thread")
    assert call.params["thread_ts"] == "9.9"
    # Without wait, what the context sent before: no id unless given, and then that id back.
    assert await context.say("no wait") is None
    assert await context.say("with an id", id="mine-1") == "mine-1"
    standin.wait_call("chat.postMessage", channel="C0CTX", text="no wait")
    standin.wait_call("chat.postMessage", channel="C0CTX", text="with an id")
    await close_layer(context.channel_layer)


async def test_a_result_that_never_comes_raises_timeout_error(redis_server, tmp_path):
    # A layer with nobody on slack.send: the message waits, the helper gives up.
    config = tmp_path / "g.yaml"
    config.write_text(yaml.safe_dump({"layer": {"url": redis_server.url, "prefix": f"n{uuid.uuid4().hex[:8]}"}}))
    with django_settings_for(config):
        with pytest.raises(TimeoutError, match="no result for slack.send"):
            await async_slack_send("post", channel="C1", text="x", wait=True, timeout=0.5)


# --------------------------------------------------------------------------
# MQTT


@pytest.fixture
def mqtt_gateway(redis_server, mosquitto, tmp_path):
    from mqtt_stack import start_gateway, write_config

    config = write_config(tmp_path, redis_server.url, mosquitto.url,
                          [{"filter": "in/#", "qos": 1, "channel": "mqtt.in"}])
    daemon = start_gateway(config)
    with django_settings_for(config):
        yield config
    daemon.stop()


def test_mqtt_publish_sync_returns_the_id_or_the_result(mqtt_gateway, mosquitto):
    from mqtt_stack import Subscriber

    subscriber = Subscriber(mosquitto.port, "out/#")
    try:
        subscriber.ready("out/probe")
        assert isinstance(mqtt_publish("out/a", b"one", qos=1), str)
        result = mqtt_publish("out/b", "two", qos=1, wait=True, timeout=20)
        assert (result["type"], result["ok"], result["topic"]) == ("mqtt.result", True, "out/b")
        subscriber.wait_for(lambda lines: "out/a|1|0|one" in lines and "out/b|1|0|two" in lines)
    finally:
        subscriber.close()


async def test_mqtt_context_subscribe_publish_unsubscribe_with_results(mqtt_gateway, mosquitto):
    from mqtt_stack import mosquitto_pub

    consumer = consumer_on(mqtt_gateway)
    layer = consumer.channel_layer
    context = MqttContext(consumer, inbound_mqtt("in/x", b"", reply_channel="mqtt.send"))
    subscribed = await context.subscribe("runtime/#", qos=1, channel="mqtt.runtime", id="sub-1",
                                         wait=True, timeout=20)
    assert (subscribed["id"], subscribed["request"], subscribed["ok"], subscribed["granted_qos"]) == \
        ("sub-1", "mqtt.subscribe", True, 1)
    await asyncio.to_thread(mosquitto_pub, mosquitto.port, "runtime/1", b"live", 1)
    inbound = await asyncio.wait_for(layer.receive("mqtt.runtime"), 20)
    assert (inbound["topic"], inbound["payload"]) == ("runtime/1", b"live")

    published = await context.publish("out/c", b"3", qos=1, wait=True, timeout=20)
    assert published["ok"] and published["request"] == "mqtt.publish"
    unsubscribed = await context.unsubscribe("runtime/#", wait=True, timeout=20)
    assert (unsubscribed["request"], unsubscribed["ok"]) == ("mqtt.unsubscribe", True)
    assert await context.unsubscribe("never/subscribed", id="u-2") == "u-2"
    assert isinstance(await async_mqtt_publish("out/d", b"4"), str)
    await close_layer(layer)


# --------------------------------------------------------------------------
# Email (the backend has its own tests): a consumer's reply can wait for email.sent.


async def test_email_context_reply_waits_for_email_sent(email_gateway):
    config, maildir = email_gateway
    message = email_receive(from_="a@example.test", to="echo@demo.local", subject="hi", body="body\n",
                            message_id="<m1@x>", reply_channel="email.send")
    context = EmailContext(consumer_on(config), message)
    result = await context.reply(text="answer", wait=True, timeout=20)
    assert result["type"] == "email.sent" and result["recipients"] == ["a@example.test"]
    sent = await context.reply(text="again")  # without wait: the email.send, as before
    assert sent["type"] == "email.send" and sent["in_reply_to"] == "<m1@x>"
    await close_layer(context.channel_layer)


# --------------------------------------------------------------------------
# WebSocket


async def test_websocket_group_send_reaches_the_group(redis_server, tmp_path):
    port = free_port()
    config = tmp_path / "ws.yaml"
    config.write_text(yaml.safe_dump({
        "layer": {"url": redis_server.url, "prefix": f"w{uuid.uuid4().hex[:8]}"},
        "websocket": {"listen": f"127.0.0.1:{port}", "grace_period": 2,
                      "routes": [{"path": "^/g/$", "channel": "websocket.grouptest", "auto_accept": True}]},
    }))
    daemon = await asyncio.to_thread(listening_gateway, "websocket", config, port)
    layer = build_layer(load_config(config).layer)
    try:
        with django_settings_for(config):
            async with websockets.connect(f"ws://127.0.0.1:{port}/g/") as client:
                connect = await asyncio.wait_for(layer.receive("websocket.grouptest"), 20)
                await layer.group_add("news", connect["reply_channel"])
                assert await async_websocket_group_send("news", text="from a view") is None
                assert await asyncio.wait_for(client.recv(), 20) == "from a view"
                await asyncio.to_thread(websocket_group_send, "news", bytes=b"\x00from a task")
                assert await asyncio.wait_for(client.recv(), 20) == b"\x00from a task"
        with pytest.raises(ValueError, match="exactly one"):
            await async_websocket_group_send("news")
    finally:
        await close_layer(layer)
        daemon.stop()
