"""Lanes: concurrency across conversations, order within one, error isolation.

Real Channels consumers (AsyncConsumer, SyncConsumer, the gateways' base
consumer) behind a real ChannelNameRouter, driven through ChannelLanes and
ConcurrentWorker. Concurrency is proven with gates that only open when
several handlers are inside at once (a serial worker would never open them),
not with timings.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import uuid

import pytest
from channels.consumer import AsyncConsumer, SyncConsumer
from channels.layers import InMemoryChannelLayer, channel_layers
from channels.routing import ChannelNameRouter, ProtocolTypeRouter

from consumers.base import GatewayConsumer
from gateways.core.lanes import ChannelLanes
from gateways.core.worker import consumer_class_for, conversation_key

@pytest.fixture(scope="module", autouse=True)
def django_settings():
    """Consumers need settings; configure minimal ones only if no other test did
    (at import time this would decide settings for every package of a full run)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
        django.setup()


ALIAS = f"lanes-{uuid.uuid4().hex}"
channel_layers.set(ALIAS, InMemoryChannelLayer(capacity=100000))


class Recorder:
    """What the consumers saw, shared with the test."""

    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = collections.defaultdict(list)
        self.inside: collections.Counter = collections.Counter()
        self.overlap = 0  # handlers of one conversation running at once: must stay 0
        self.peak = 0
        self.gate = asyncio.Event()
        self.gate_size = 0
        self.threads: set[int] = set()
        self.lock = threading.Lock()


REC = Recorder()


class OrderedConsumer(AsyncConsumer):
    channel_layer_alias = ALIAS

    async def work(self, message):
        conv = message["conv"]
        REC.inside[conv] += 1
        if REC.inside[conv] > 1:
            REC.overlap += 1
        REC.peak = max(REC.peak, sum(1 for v in REC.inside.values() if v))
        if REC.gate_size and sum(1 for v in REC.inside.values() if v) >= REC.gate_size:
            REC.gate.set()
        if REC.gate_size and message["n"] == 0:
            await asyncio.wait_for(REC.gate.wait(), 20)  # opens only when many run at once
        await asyncio.sleep(random.random() / 500)
        REC.seen[conv].append(message["n"])
        REC.inside[conv] -= 1
        if message.get("boom"):
            raise RuntimeError("boom (on purpose)")


class ThreadedConsumer(SyncConsumer):
    channel_layer_alias = ALIAS
    barrier: threading.Barrier | None = None

    def work(self, message):
        with REC.lock:
            REC.threads.add(threading.get_ident())
        if message["n"] == 0 and self.barrier is not None:
            self.barrier.wait()  # BrokenBarrierError unless all parties are inside at once
        with REC.lock:
            REC.seen[message["conv"]].append(message["n"])


class BaseConsumer(GatewayConsumer):
    channel_layer_alias = ALIAS
    conversation_key = "conv"

    async def work(self, ctx):
        if ctx.message.get("boom"):
            raise ValueError("handler failure (on purpose)")
        REC.seen[ctx.message["conv"]].append(ctx.message["n"])


APP = ProtocolTypeRouter({"channel": ChannelNameRouter({
    "ordered": OrderedConsumer.as_asgi(),
    "threaded": ThreadedConsumer.as_asgi(),
    "based": BaseConsumer.as_asgi(),
})})


def by_conv(message):
    return message.get("conv")


@pytest.fixture(autouse=True)
def fresh_recorder():
    global REC
    REC = Recorder()
    yield


async def run_all(lanes: ChannelLanes, messages: list[dict]) -> None:
    for message in messages:
        await lanes.submit(message)
    await asyncio.wait_for(lanes.idle(), 60)
    await lanes.close()


def interleaved(convs: int, per_conv: int, **extra) -> list[dict]:
    return [{"type": "work", "conv": f"c{c}", "n": n, **extra} for n in range(per_conv) for c in range(convs)]


async def test_conversations_run_concurrently_and_each_keeps_its_order():
    REC.gate_size = 20  # every first message waits until 20 conversations are inside at once
    lanes = ChannelLanes("ordered", APP, by_conv, concurrency=64)
    await run_all(lanes, interleaved(20, 30))
    assert REC.gate.is_set()
    assert {conv: seq for conv, seq in REC.seen.items()} == {f"c{c}": list(range(30)) for c in range(20)}
    assert REC.overlap == 0
    assert lanes.stats["handled"] == 600 and lanes.stats["failed"] == 0


async def test_more_conversations_than_lanes_still_keep_order():
    lanes = ChannelLanes("ordered", APP, by_conv, concurrency=3, limit=5)
    messages = interleaved(12, 10)
    random.Random(7).shuffle(messages)  # order within a conversation is what was submitted
    expected = collections.defaultdict(list)
    for message in messages:
        expected[message["conv"]].append(message["n"])
    await run_all(lanes, messages)
    assert dict(REC.seen) == dict(expected)
    assert REC.overlap == 0
    assert len(lanes.lanes) == 3


async def test_submit_waits_at_the_in_flight_limit():
    REC.gate_size = 99  # never opens: the first messages block
    lanes = ChannelLanes("ordered", APP, by_conv, concurrency=2, limit=2)
    await lanes.submit({"type": "work", "conv": "a", "n": 0})
    await lanes.submit({"type": "work", "conv": "b", "n": 0})
    third = asyncio.ensure_future(lanes.submit({"type": "work", "conv": "c", "n": 0}))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not third.done()  # held back: the listener stops taking messages off the layer
    REC.gate.set()
    await asyncio.wait_for(third, 20)
    await asyncio.wait_for(lanes.idle(), 20)
    await lanes.close()
    assert sorted(REC.seen) == ["a", "b", "c"]


async def test_a_raising_consumer_loses_neither_its_conversation_nor_others():
    lanes = ChannelLanes("ordered", APP, by_conv, concurrency=8)
    messages = interleaved(4, 10)
    for message in messages:
        if message["conv"] == "c1" and message["n"] in (2, 7):
            message["boom"] = True
    await run_all(lanes, messages)
    # The instance died after recording 2 and 7; fresh instances took the rest, in order.
    assert dict(REC.seen) == {f"c{c}": list(range(10)) for c in range(4)}
    assert lanes.stats["failed"] == 2
    assert lanes.stats["handled"] == 38


async def test_a_failing_gateway_consumer_handler_is_counted_and_the_lane_goes_on():
    lanes = ChannelLanes("based", APP, conversation_key(BaseConsumer), concurrency=4)
    messages = interleaved(3, 5)
    messages[4]["boom"] = True  # conv c1, n=1
    await run_all(lanes, messages)
    assert REC.seen["c1"] == [0, 2, 3, 4]
    assert REC.seen["c0"] == REC.seen["c2"] == list(range(5))
    assert BaseConsumer.stats["failed"] >= 1


async def test_sync_consumers_share_one_thread_by_default_in_order():
    """As under runworker: every lane's sync code on the one thread-sensitive thread."""
    lanes = ChannelLanes("threaded", APP, by_conv, concurrency=4)
    await run_all(lanes, interleaved(4, 25))
    assert dict(REC.seen) == {f"c{c}": list(range(25)) for c in range(4)}
    assert len(REC.threads) == 1


async def test_parallel_sync_runs_sync_consumers_in_parallel_threads_in_order():
    ThreadedConsumer.barrier = threading.Barrier(4, timeout=20)
    try:
        lanes = ChannelLanes("threaded", APP, by_conv, concurrency=4, parallel_sync=True)
        await run_all(lanes, interleaved(4, 25))
    finally:
        ThreadedConsumer.barrier = None
    assert dict(REC.seen) == {f"c{c}": list(range(25)) for c in range(4)}
    assert len(REC.threads) == 4


async def test_messages_without_a_conversation_are_all_handled():
    lanes = ChannelLanes("ordered", APP, lambda m: None, concurrency=4)
    await run_all(lanes, [{"type": "work", "conv": "x", "n": n} for n in range(40)])
    assert sorted(REC.seen["x"]) == list(range(40))


def test_conversation_key_precedence():
    class ByTopic(GatewayConsumer):
        conversation_key = "topic"

    class ByPair(GatewayConsumer):
        conversation_key = ("team", "channel")

    class ByFunction(GatewayConsumer):
        conversation_key = staticmethod(lambda message: message["thread"].lower())

    assert conversation_key(ByTopic)({"type": "mqtt.publish", "topic": "a/b", "reply_channel": "r"}) == "a/b"
    assert conversation_key(ByPair)({"type": "slack.message", "team": "T", "channel": "C"}) == ("T", "C")
    assert conversation_key(ByPair)({"type": "slack.event"}) is None
    assert conversation_key(ByFunction)({"type": "email.receive", "thread": "ABC"}) == "abc"
    # No override: the protocol's rule (websocket: the connection's reply channel).
    assert conversation_key(GatewayConsumer)({"type": "websocket.receive", "reply_channel": "r1"}) == "r1"
    # Not a gateway's message: its reply_channel, else unordered.
    assert conversation_key(None)({"type": "custom.thing", "reply_channel": "r2"}) == "r2"
    assert conversation_key(None)({"type": "custom.thing"}) is None


def test_consumer_class_is_found_through_the_routers():
    assert consumer_class_for(APP, "ordered") is OrderedConsumer
    assert consumer_class_for(APP, "based") is BaseConsumer
    with pytest.raises(LookupError):
        consumer_class_for(APP, "nobody.routes.this")
