"""The hand-off pipeline: order per topic, PUBACK in arrival order, retry while the layer refuses."""

from __future__ import annotations

import asyncio
import logging

from gateways.core.runtime import HandoffError
from gateways.core.metrics import Metrics
from gateways.mqtt.inbound import HandoffPipeline
from servers import async_wait_until

log = logging.getLogger("test.mqtt")


class Layer:
    """A layer whose sends block until released, or refuse while ``refusing``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.refusing = 0
        self.started: list[dict] = []  # sends under way or done, so tests can wait for one

    async def send(self, channel: str, message: dict) -> None:
        self.started.append(message)
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
    # Nothing to await for "keeps waiting": give the pipeline a few turns of the loop.
    for _ in range(20):
        await asyncio.sleep(0)
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
    await async_wait_until(lambda: layer.started, 5, "the first hand-off is under way")
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
        await asyncio.sleep(0.01)  # a send that takes a while, so sends overlap: the test's point
        active -= 1
        sent.append(message["topic"])

    pipeline = HandoffPipeline(send, log, Metrics(), inflight=1000, concurrency=4)
    for n in range(40):
        await pipeline.put(f"t{n}", "c", {"topic": f"t{n}"}, 1, lambda: True)
    await asyncio.wait_for(pipeline.drained(), 10)
    assert len(sent) == 40
    assert peak == 4


class ManyLayer(Layer):
    """A layer with an ordered ``send_many`` that holds at most ``room`` more messages."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[int]] = []
        self.room: int | None = None

    async def send_many(self, channel: str, messages: list[dict]) -> int:
        self.started.extend(messages)
        gate = self.gates.get(messages[0]["topic"])
        if gate is not None:
            await gate.wait()
        self.calls.append([m["n"] for m in messages])
        if self.refusing:
            self.refusing -= 1
            raise HandoffError("unavailable", "down")
        taken = len(messages) if self.room is None else min(self.room, len(messages))
        if self.room is not None:
            self.room -= taken
        if not taken:
            raise HandoffError("full", "full")
        self.sent.extend((channel, m) for m in messages[:taken])
        return taken


async def test_batched_a_topics_waiting_messages_go_together_in_order_one_hand_off_at_a_time():
    layer, acks = ManyLayer(), []
    pipeline = HandoffPipeline(layer.send, log, Metrics(), inflight=100, send_many=layer.send_many, batch=8)
    layer.gates["t"] = asyncio.Event()
    for n in range(20):
        await pipeline.put("t", "c", {"topic": "t", "n": n}, 1, acker(acks, n))
    for _ in range(20):
        await asyncio.sleep(0)
    assert layer.calls == [] and acks == []
    layer.gates["t"].set()
    await asyncio.wait_for(pipeline.drained(), 5)
    # In batches of at most 8, each after the previous one was taken.
    assert layer.calls == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]
    assert [m["n"] for _, m in layer.sent] == list(range(20))
    assert acks == list(range(20))


async def test_batched_what_the_layer_refused_is_retried_in_order_and_acked_only_once_taken():
    layer, acks = ManyLayer(), []
    metrics = Metrics()
    pipeline = HandoffPipeline(layer.send, log, metrics, inflight=100, retry_max=0.05,
                               send_many=layer.send_many, batch=100)
    layer.gates["t"] = asyncio.Event()
    layer.room = 3
    for n in range(6):
        await pipeline.put("t", "c", {"topic": "t", "n": n}, 1, acker(acks, n))
    layer.gates["t"].set()
    await async_wait_until(lambda: len(layer.calls) >= 2, 5, "the refused rest was handed off again")
    assert [m["n"] for _, m in layer.sent] == [0, 1, 2]
    assert acks == []  # 0..2 are taken, but they share a hand-off with 3..5, which wait
    layer.room = None
    await asyncio.wait_for(pipeline.drained(), 5)
    assert [m["n"] for _, m in layer.sent] == list(range(6))
    assert acks == list(range(6))
    assert layer.calls[0] == [0, 1, 2, 3, 4, 5] and layer.calls[1:] == [[3, 4, 5]] * (len(layer.calls) - 1)
    assert metrics.value("mqtt_handoff_retries_total") >= 1


async def test_batched_an_unavailable_layer_is_retried_and_abandoned_messages_are_left_out():
    layer, acks = ManyLayer(), []
    pipeline = HandoffPipeline(layer.send, log, Metrics(), inflight=100, retry_max=0.05,
                               send_many=layer.send_many)
    layer.gates["t"] = asyncio.Event()
    old, new = object(), object()
    await pipeline.put("t", "c", {"topic": "t", "n": 1}, 1, acker(acks, 1), old)  # all three under way
    await pipeline.put("t", "c", {"topic": "t", "n": 2}, 1, acker(acks, 2), old)
    await pipeline.put("t", "c", {"topic": "t", "n": 3}, 0, acker(acks, 3), old)
    await async_wait_until(lambda: layer.started, 5, "the first hand-off is under way")
    assert pipeline.abandon(old) == 2
    await pipeline.put("t", "c", {"topic": "t", "n": 4}, 1, acker(acks, 4), new)
    layer.refusing = 3
    layer.gates["t"].set()
    await asyncio.wait_for(pipeline.drained(), 5)
    # 1 and 2 were under way but refused: abandoned, they are not retried (the broker redelivers
    # them); QoS 0 carries on and is retried until taken; nothing acked on the old connection.
    assert [m["n"] for _, m in layer.sent] == [3, 4]
    assert layer.calls[0] == [1, 2, 3] and layer.calls[1] == [3]
    assert acks == [4]


async def test_batched_topics_still_go_side_by_side_and_acks_in_arrival_order():
    layer, acks = ManyLayer(), []
    pipeline = HandoffPipeline(layer.send, log, Metrics(), inflight=10, send_many=layer.send_many)
    layer.gates["slow"] = asyncio.Event()
    await pipeline.put("slow", "c", {"topic": "slow", "n": 1}, 1, acker(acks, "slow-1"))
    await pipeline.put("fast", "c", {"topic": "fast", "n": 2}, 1, acker(acks, "fast-2"))
    await pipeline.put("fast", "c", {"topic": "fast", "n": 3}, 0, acker(acks, "fast-3"))
    await pipeline.put("fast", "other", {"topic": "fast", "n": 4}, 1, acker(acks, "fast-4"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert [m["n"] for _, m in layer.sent] == [2, 3, 4]
    assert [c for c, _ in layer.sent] == ["c", "c", "other"]  # one send per channel
    assert acks == []
    layer.gates["slow"].set()
    await asyncio.wait_for(pipeline.drained(), 5)
    assert acks == ["slow-1", "fast-2", "fast-4"]
