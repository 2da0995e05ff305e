"""The hand-off pipeline: order per topic, PUBACK in arrival order, retry while the layer refuses."""

from __future__ import annotations

import asyncio
import logging

from gateways.core.daemon import HandoffError
from gateways.core.metrics import Metrics
from gateways.mqtt.inbound import HandoffPipeline

log = logging.getLogger("test.mqtt")


class Layer:
    """A layer whose sends block until released, or refuse while ``refusing``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.refusing = 0

    async def send(self, channel: str, message: dict) -> None:
        gate = self.gates.get(message["topic"])
        if gate is not None:
            await gate.wait()
        if self.refusing:
            self.refusing -= 1
            raise HandoffError("unavailable", "down")
        self.sent.append((channel, message))


def acker(acks: list, name: str, result: bool = True):
    def ack() -> bool:
        acks.append(name)
        return result
    return ack


async def test_acks_go_out_in_arrival_order_even_when_hand_offs_finish_out_of_order():
    layer, acks = Layer(), []
    pipeline = HandoffPipeline(layer.send, log, Metrics(), inflight=10)
    layer.gates["slow"] = asyncio.Event()
    await pipeline.put("slow", "c", {"topic": "slow", "n": 1}, 1, acker(acks, "slow-1"))
    await pipeline.put("fast", "c", {"topic": "fast", "n": 2}, 1, acker(acks, "fast-2"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert [m["n"] for _, m in layer.sent] == [2]  # topics are handed off concurrently
    assert acks == []  # but fast-2 waits for slow-1's PUBACK
    layer.gates["slow"].set()
    await asyncio.wait_for(pipeline.drained(), 5)
    assert acks == ["slow-1", "fast-2"]


async def test_one_topic_is_handed_off_in_order():
    layer, acks = Layer(), []
    pipeline = HandoffPipeline(layer.send, log, Metrics(), inflight=100)
    layer.gates["t"] = asyncio.Event()
    for n in range(20):
        await pipeline.put("t", "c", {"topic": "t", "n": n}, 1, acker(acks, n))
    layer.gates["t"].set()
    await asyncio.wait_for(pipeline.drained(), 5)
    assert [m["n"] for _, m in layer.sent] == list(range(20))
    assert acks == list(range(20))


async def test_a_refusing_layer_is_retried_and_nothing_is_acked_before_it_accepts():
    layer, acks = Layer(), []
    metrics = Metrics()
    pipeline = HandoffPipeline(layer.send, log, metrics, inflight=10, retry_max=0.05)
    layer.refusing = 5
    await pipeline.put("t", "c", {"topic": "t", "n": 1}, 1, acker(acks, 1))
    await asyncio.wait_for(pipeline.drained(), 10)
    assert [m["n"] for _, m in layer.sent] == [1]
    assert acks == [1]
    assert metrics.value("mqtt_handoff_retries_total") == 5


async def test_qos0_beyond_its_backlog_is_dropped_and_counted_while_qos1_waits():
    layer, acks = Layer(), []
    metrics = Metrics()
    pipeline = HandoffPipeline(layer.send, log, metrics, inflight=1, qos0_backlog=2)
    layer.gates["t"] = asyncio.Event()
    assert await pipeline.put("t", "c", {"topic": "t", "n": 1}, 0, acker(acks, 1))
    assert await pipeline.put("t", "c", {"topic": "t", "n": 2}, 0, acker(acks, 2))
    assert not await pipeline.put("t", "c", {"topic": "t", "n": 3}, 0, acker(acks, 3))
    assert metrics.value("mqtt_qos0_dropped_total") == 1
    assert await pipeline.put("t", "c", {"topic": "t", "n": 4}, 1, acker(acks, 4))
    waiting = asyncio.create_task(pipeline.put("t", "c", {"topic": "t", "n": 5}, 1, acker(acks, 5)))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # QoS 1 past the bound waits (unread, unacknowledged), never dropped
    layer.gates["t"].set()
    await asyncio.wait_for(waiting, 5)
    await asyncio.wait_for(pipeline.drained(), 5)
    assert [m["n"] for _, m in layer.sent] == [1, 2, 4, 5]
    assert acks == [4, 5]  # QoS 0 needs no PUBACK


async def test_abandon_leaves_unsent_qos1_to_the_broker_and_acks_nothing_for_it():
    layer, acks = Layer(), []
    pipeline = HandoffPipeline(layer.send, log, Metrics(), inflight=10)
    layer.gates["t"] = asyncio.Event()
    old, new = object(), object()
    await pipeline.put("t", "c", {"topic": "t", "n": 1}, 1, acker(acks, 1), old)  # its send is under way
    await pipeline.put("t", "c", {"topic": "t", "n": 2}, 1, acker(acks, 2), old)  # waits behind it
    await pipeline.put("t", "c", {"topic": "t", "n": 3}, 0, acker(acks, 3), old)
    await asyncio.sleep(0.01)
    assert pipeline.abandon(old) == 2
    await pipeline.put("t", "c", {"topic": "t", "n": 4}, 1, acker(acks, 4), new)
    layer.gates["t"].set()
    await asyncio.wait_for(pipeline.drained(), 5)
    # 1 was already being sent and finishes; 2 is left to the broker's redelivery; QoS 0 carries on.
    assert [m["n"] for _, m in layer.sent] == [1, 3, 4]
    assert acks == [4]  # nothing is acknowledged on the closed connection


async def test_an_ack_on_a_closed_connection_is_counted():
    layer, acks = Layer(), []
    metrics = Metrics()
    pipeline = HandoffPipeline(layer.send, log, metrics, inflight=10)
    await pipeline.put("t", "c", {"topic": "t"}, 1, acker(acks, 1, result=False))
    await asyncio.wait_for(pipeline.drained(), 5)
    assert metrics.value("mqtt_ack_lost_total") == 1


async def test_layer_sends_at_once_stay_below_the_bound_however_many_topics():
    active = peak = 0
    sent = []

    async def send(channel: str, message: dict) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        sent.append(message["topic"])

    pipeline = HandoffPipeline(send, log, Metrics(), inflight=1000, concurrency=4)
    for n in range(40):
        await pipeline.put(f"t{n}", "c", {"topic": f"t{n}"}, 1, lambda: True)
    await asyncio.wait_for(pipeline.drained(), 10)
    assert len(sent) == 40
    assert peak == 4
