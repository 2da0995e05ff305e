"""Giving a message up when the dead-letter store cannot take it: an ERROR line
with the channel, the message's id and the consumer's traceback, and no
settling (a gateway that redelivers hands it again). A real consumer behind a
real ChannelNameRouter, run by ChannelLanes as ``gateway worker`` runs it; the
store is a real Redis client pointed at a port where no server listens.
"""

from __future__ import annotations

import pytest

import asyncio
import logging
import uuid

from channels.layers import InMemoryChannelLayer, channel_layers
from channels.routing import ChannelNameRouter, ProtocolTypeRouter
from redis import asyncio as aioredis

from consumers.base import GatewayConsumer
from gateways.core.config import RetryConfig
from gateways.core.deadletters import DeadLetterStore
from gateways.core.lanes import ChannelLanes
from gateways.core.retries import DeadLetters
from servers import free_port

ALIAS = f"giveup-{uuid.uuid4().hex}"
LAYER = InMemoryChannelLayer()
channel_layers.set(ALIAS, LAYER)


class AlwaysFailing(GatewayConsumer):
    channel_layer_alias = ALIAS

    async def email_receive(self, ctx):
        raise LookupError("no such ticket (on purpose)")


APP = ProtocolTypeRouter({"channel": ChannelNameRouter({"email.tickets": AlwaysFailing.as_asgi()})})


def settle(message):
    return message["reply_channel"], {"type": "email.ack", "id": message["id"]}


@pytest.mark.integration
async def test_an_unreachable_store_leaves_an_error_line_with_the_traceback_and_no_ack(caplog):
    store = DeadLetterStore(aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=2))
    dead_letters = DeadLetters(store, LAYER, settle)
    lanes = ChannelLanes("email.tickets", APP, lambda m: None, concurrency=2,
                         retry=RetryConfig(attempts=2, initial_delay=0.01, max_delay=0.01),
                         give_up=dead_letters.give_up)
    await lanes.submit({"type": "email.receive", "id": "e-404", "attempt": 1, "reply_channel": "email.reply!gw",
                        "message_id": "<t404@example.com>", "headers": []})
    await asyncio.wait_for(lanes.idle(), 30)
    await lanes.close()
    await store.close()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("email.receive id=e-404" in line and "attempt 1/2: LookupError" in line for line in warnings)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "consumer on email.tickets gave up email.receive id=e-404" in error
    assert "after 2 attempt(s); the dead-letter store failed (" in error and "(id e-404)" in error
    assert "Traceback (most recent call last)" in error and "LookupError: no such ticket (on purpose)" in error
    assert lanes.stats["dead_lettered"] == 1
    # Not acknowledged: the gateway hands it again, and it is not taken for a late redelivery.
    assert LAYER.channels.get("email.reply!gw") is None or LAYER.channels["email.reply!gw"].empty()
    assert not dead_letters.late_redelivery("email.tickets", {"type": "email.receive", "id": "e-404", "attempt": 2})
