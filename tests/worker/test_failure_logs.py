"""Every consumer failure log line names the channel, the message's id and the
protocol's key, so the failed message can be found in the gateway's logs and
in the outside system.

Real consumers behind a real ChannelNameRouter, run by ChannelLanes as
``gateway worker`` runs them; the messages carry the keys their specs give.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from channels.consumer import AsyncConsumer
from channels.layers import InMemoryChannelLayer, channel_layers
from channels.routing import ChannelNameRouter, ProtocolTypeRouter

from consumers.base import GatewayConsumer
from gateways.core.describe import describe
from gateways.core.lanes import ChannelLanes

ALIAS = f"faillogs-{uuid.uuid4().hex}"
channel_layers.set(ALIAS, InMemoryChannelLayer())

#: One message per protocol, as its gateway sends it, and what a log line must show.
MESSAGES = {
    "mqtt": ({"type": "mqtt.publish", "id": "m-17", "topic": "sensors/kitchen/t", "payload": b"21.5", "qos": 1,
              "retain": False, "dup": False, "subscription": "sensors/#", "properties": {},
              "reply_channel": "mqtt.send"},
             ["id=m-17", "topic=sensors/kitchen/t"]),
    "websocket": ({"type": "websocket.receive", "id": "w-3", "reply_channel": "specific.gw!conn42",
                   "path": "/chat/lobby/", "kwargs": {"room": "lobby"}, "order": 3, "text": "hi"},
                  ["id=w-3", "reply_channel=specific.gw!conn42", "path=/chat/lobby/"]),
    "slack": ({"type": "slack.message", "id": "Ev0123", "reply_channel": "slack.send", "team": "T1",
               "channel": "C0456", "user": "U1", "text": "hello", "ts": "1.2", "thread_ts": None, "event": {},
               "retry_attempt": 0, "subtype": None, "bot_id": None, "channel_type": "channel"},
              ["id=Ev0123", "team=T1", "channel=C0456"]),
    "email": ({"type": "email.receive", "id": "e-9", "reply_channel": "email.reply!x", "attempt": 1,
               "channel": "email.inbox", "recipients": ["a@example.com"], "message_id": "<abc@example.com>",
               "subject": "hi", "headers": [["Message-ID", "<abc@example.com>"]]},
              ["id=e-9", "message_id=<abc@example.com>"]),
    "email, Message-ID header only": ({"type": "email.receive", "id": "e-10", "reply_channel": "email.reply!x",
                                       "headers": [["Subject", "x"], ["message-id", "<hdr@example.com>"]]},
                                      ["id=e-10", "message_id=<hdr@example.com>"]),
}


class FailingHandlers(GatewayConsumer):
    """The project's consumer API: a handler that raises is logged by ``dispatch``."""

    channel_layer_alias = ALIAS

    async def mqtt_publish(self, ctx):
        raise ValueError("handler failure (on purpose)")

    websocket_receive = slack_message = email_receive = mqtt_publish


class FailingSyncHandlers(FailingHandlers):
    """The same with sync handlers (run through ``database_sync_to_async``)."""

    def mqtt_publish(self, ctx):
        raise ValueError("handler failure (on purpose)")

    websocket_receive = slack_message = email_receive = mqtt_publish


class CrashingConsumer(AsyncConsumer):
    """A stock Channels consumer: its instance dies, and the lane logs it."""

    channel_layer_alias = ALIAS

    async def dispatch(self, message):
        raise RuntimeError("instance crash (on purpose)")


APP = ProtocolTypeRouter({"channel": ChannelNameRouter({
    "failing.async": FailingHandlers.as_asgi(),
    "failing.sync": FailingSyncHandlers.as_asgi(),
    "crashing": CrashingConsumer.as_asgi(),
    "nobody.handles": FailingHandlers.as_asgi(),
})})


async def handle(channel: str, message: dict) -> None:
    lanes = ChannelLanes(channel, APP, lambda m: m.get("id"), concurrency=2)
    await lanes.submit(message)
    await asyncio.wait_for(lanes.idle(), 20)
    await lanes.close()


def failure_lines(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("channel", ["failing.async", "failing.sync"])
@pytest.mark.parametrize("protocol", list(MESSAGES))
async def test_a_raising_handler_is_logged_with_channel_id_and_key(caplog, channel, protocol):
    message, wanted = MESSAGES[protocol]
    await handle(channel, dict(message))
    (line,) = failure_lines(caplog, "consumers")
    assert f"on {channel}:" in line and message["type"] in line
    assert all(part in line for part in wanted), line


@pytest.mark.parametrize("protocol", list(MESSAGES))
async def test_a_crashing_instance_is_logged_with_channel_id_and_key(caplog, protocol):
    message, wanted = MESSAGES[protocol]
    await handle("crashing", dict(message))
    (line,) = failure_lines(caplog, "gateway.worker")
    assert "consumer on crashing failed handling " + message["type"] in line
    assert all(part in line for part in wanted), line


async def test_a_message_nobody_handles_is_logged_the_same_way(caplog):
    message = {"type": "mqtt.unknown_kind", "id": "m-99", "topic": "a/b"}
    await handle("nobody.handles", message)
    (line,) = failure_lines(caplog, "consumers")
    assert "on nobody.handles: no handler for mqtt.unknown_kind id=m-99 topic=a/b" in line


def test_describe_never_raises_and_stays_one_short_line():
    assert describe("not a dict") == "a str (not a message)"
    assert describe({}) == "? id=?"
    long = describe({"type": "mqtt.publish", "id": 5, "topic": "t/" + "x" * 500 + "\nmore"})
    assert "\n" not in long and len(long) < 200 and long.startswith("mqtt.publish id=5 topic=t/xxx")
    assert describe({"type": "email.receive", "headers": "not a list"}) == "email.receive id=?"
