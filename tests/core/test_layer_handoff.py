"""The core's hand-off to the layer, against a fake layer (no I/O): order per key, batches,
backpressure, retries that wait for one another, acknowledgement after the hand-off, drain."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateways.core import handoff as handoff_module
from gateways.core.handoff import HandoffItem, LayerHandoff, Room
from gateways.core.metrics import Metrics
from gateways.core.runtime import HandoffError
from gateways.core.specs import InvalidMessage

log = logging.getLogger("test.handoff")


class FakeLayer:
    """Records every send; a send waits at its channel's gate when one is set, refuses while
    ``refusing``, takes at most ``room`` more messages when that is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.sent: list[int] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.refusing = 0
        self.room: int | None = None
        self.invalid: set[int] = set()
        self.active = 0
        self.peak = 0

    async def send(self, channel: str, message: dict) -> None:
        taken = await self.send_many(channel, [message])
        assert taken == 1

    async def send_many(self, channel: str, messages: list[dict]) -> int:
        self.calls.append((channel, [m["n"] for m in messages]))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            gate = self.gates.get(channel)
            if gate is not None:
                await gate.wait()
        finally:
            self.active -= 1
        if any(m["n"] in self.invalid for m in messages):
            raise InvalidMessage("n is not allowed")
        if self.refusing:
            self.refusing -= 1
            raise HandoffError("unavailable", "the fake layer is down")
        taken = len(messages) if self.room is None else min(self.room, len(messages))
        if self.room is not None:
            self.room -= taken
        if not taken:
            raise HandoffError("full", "the fake layer is full")
        self.sent.extend(m["n"] for m in messages[:taken])
        return taken


def handoff(layer: FakeLayer, batched: bool = True, **options) -> LayerHandoff:
    return LayerHandoff(layer.send, log, options.pop("metrics", Metrics()), "test",
                        send_many=layer.send_many if batched else None, retry_initial=0.001, retry_max=0.01,
                        **options)


def acker(acks: list, name: object):
    return lambda item: acks.append(name)


async def turns(n: int = 20) -> None:
    """Let the hand-off run until it waits (nothing to await for "nothing happens")."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_one_keys_items_go_in_order_and_other_keys_side_by_side():
    layer, acks = FakeLayer(), []
    pipe = handoff(layer, batched=False)
    layer.gates["slow"] = asyncio.Event()
    for n in range(5):
        await pipe.put("slow", {"n": n}, key="a", ack=acker(acks, n))
    await pipe.put("fast", {"n": 99}, key="b", ack=acker(acks, 99))
    await turns()
    assert layer.sent == [99], "another key waited for a blocked one"
    assert [c for c in layer.calls if c[0] == "slow"] == [("slow", [0])], "a key had two hand-offs at once"
    layer.gates["slow"].set()
    await asyncio.wait_for(pipe.drained(), 5)
    assert [n for n in layer.sent if n != 99] == [0, 1, 2, 3, 4]
    assert acks == [99, 0, 1, 2, 3, 4]  # without ack_in_order, each as soon as it is handed off


async def test_items_without_a_key_go_side_by_side_up_to_the_concurrency():
    layer = FakeLayer()
    pipe = handoff(layer, batched=False, concurrency=3)
    layer.gates["c"] = asyncio.Event()
    for n in range(10):
        await pipe.put("c", {"n": n})
    await turns()
    assert layer.active == 3
    layer.gates["c"].set()
    await asyncio.wait_for(pipe.drained(), 5)
    assert sorted(layer.sent) == list(range(10)) and layer.peak == 3


async def test_sends_at_once_stay_below_max_sends_however_many_keys():
    layer = FakeLayer()
    pipe = handoff(layer, max_sends=4)
    layer.gates["c"] = asyncio.Event()
    for n in range(40):
        await pipe.put("c", {"n": n}, key=n)
    await turns()
    assert layer.active == 4
    layer.gates["c"].set()
    await asyncio.wait_for(pipe.drained(), 5)
    assert sorted(layer.sent) == list(range(40)) and layer.peak == 4


async def test_a_lanes_waiting_items_for_one_channel_go_in_one_send_up_to_the_batch():
    layer = FakeLayer()
    pipe = handoff(layer, batch=4)
    layer.gates["c"] = asyncio.Event()
    for n in range(7):
        await pipe.put("c", {"n": n}, key="k")
    await pipe.put("other", {"n": 7}, key="k")
    await pipe.put("c", {"n": 8}, key="k")
    await turns()
    layer.gates["c"].set()
    await asyncio.wait_for(pipe.drained(), 5)
    # Batches of at most 4, split at a change of channel.
    assert layer.calls == [("c", [0, 1, 2, 3]), ("c", [4, 5, 6]), ("other", [7]), ("c", [8])]


async def test_the_linger_sends_what_arrives_together_in_one_send():
    layer = FakeLayer()
    pipe = handoff(layer, linger=0.05)
    for n in range(4):
        await pipe.put("c", {"n": n})
    await turns()
    assert layer.calls == [], "an item left before the linger was over"
    await asyncio.wait_for(pipe.drained(), 5)
    assert layer.calls == [("c", [0, 1, 2, 3])]


async def test_put_waits_for_room_offer_is_refused_and_a_settled_item_gives_its_place_back():
    layer = FakeLayer()
    pipe = handoff(layer, room=Room(2))
    layer.gates["c"] = asyncio.Event()
    await pipe.put("c", {"n": 0}, key="k")
    assert pipe.offer("c", {"n": 1}, key="k") is not None
    assert pipe.offer("c", {"n": 2}, key="k") is None, "an offer beyond the room was taken"
    waiting = asyncio.create_task(pipe.put("c", {"n": 3}, key="k"))
    await turns()
    assert not waiting.done(), "a put beyond the room did not wait"
    layer.gates["c"].set()
    await asyncio.wait_for(waiting, 5)
    await asyncio.wait_for(pipe.drained(), 5)
    assert layer.sent == [0, 1, 3]
    assert pipe.room.used == 0


async def test_a_room_serves_its_waiters_in_order_and_a_cancelled_waiter_passes_its_place_on():
    room = Room(1)
    assert room.try_take()
    got: list[int] = []

    async def take(n: int) -> None:
        await room.take()
        got.append(n)

    first, second, third = (asyncio.create_task(take(n)) for n in range(3))
    await turns()
    second.cancel()
    room.give_back()
    await turns()
    room.give_back()
    await asyncio.wait_for(asyncio.gather(first, third), 5)
    assert got == [0, 2] and room.used == 1
    assert not room.try_take()


async def test_a_refusal_is_retried_and_the_others_to_that_channel_wait_for_its_backoff(monkeypatch):
    layer, acks = FakeLayer(), []
    metrics = Metrics()
    backoff_over = asyncio.Event()
    waits = 0

    async def controlled_wait(self) -> None:
        nonlocal waits
        waits += 1
        await backoff_over.wait()

    monkeypatch.setattr(handoff_module.Backoff, "wait", controlled_wait)
    pipe = handoff(layer, metrics=metrics)
    layer.refusing = 1
    await pipe.put("c", {"n": 0}, key="a", ack=acker(acks, 0))
    await turns()
    assert waits == 1 and acks == []
    for n in range(1, 4):  # other keys, same channel: they wait for the backoff, not hammer the layer
        await pipe.put("c", {"n": n}, key=f"k{n}", ack=acker(acks, n))
    await pipe.put("d", {"n": 9}, key="other channel", ack=acker(acks, 9))
    await turns()
    assert [c for c in layer.calls if c[0] == "c"] == [("c", [0])]
    assert layer.sent == [9], "another channel waited for this one's backoff"
    backoff_over.set()
    await asyncio.wait_for(pipe.drained(), 5)
    assert sorted(layer.sent) == [0, 1, 2, 3, 9] and sorted(acks) == [0, 1, 2, 3, 9]
    assert metrics.value("test_handoff_retries_total") == 1


async def test_what_the_layer_did_not_take_goes_again_in_order_and_is_acked_only_once_taken():
    layer, acks = FakeLayer(), []
    pipe = handoff(layer, ack_in_order=True)
    layer.gates["c"] = asyncio.Event()
    layer.room = 2
    for n in range(5):
        await pipe.put("c", {"n": n}, key="k", ack=acker(acks, n))
    layer.gates["c"].set()
    while len(layer.calls) < 3:
        await asyncio.sleep(0.001)
    assert layer.sent == [0, 1] and acks == []  # 0 and 1 went with 2..4, which wait
    layer.room = None
    await asyncio.wait_for(pipe.drained(), 5)
    assert layer.sent == [0, 1, 2, 3, 4] and acks == [0, 1, 2, 3, 4]
    assert layer.calls[0] == ("c", [0, 1, 2, 3, 4]) and {tuple(c[1]) for c in layer.calls[1:]} == {(2, 3, 4)}


async def test_acks_in_arrival_order_wait_for_every_earlier_item():
    layer, acks = FakeLayer(), []
    pipe = handoff(layer, ack_in_order=True)
    layer.gates["slow"] = asyncio.Event()
    first = await pipe.put("slow", {"n": 1}, key="slow", ack=acker(acks, 1))
    second = await pipe.put("fast", {"n": 2}, key="fast", ack=acker(acks, 2))
    assert await asyncio.wait_for(second.wait_settled(), 5) is True
    assert layer.sent == [2] and acks == [], "an ack went before an earlier item's"
    layer.gates["slow"].set()
    assert await asyncio.wait_for(first.wait_settled(), 5) is True
    await asyncio.wait_for(pipe.drained(), 5)
    assert acks == [1, 2]


async def test_an_item_the_layer_can_never_take_is_logged_counted_and_acked_and_the_rest_goes_on(caplog):
    layer, acks = FakeLayer(), []
    metrics = Metrics()
    failed: list[HandoffItem] = []
    pipe = handoff(layer, metrics=metrics, on_failed=lambda item, exc: failed.append(item))
    layer.invalid = {1}
    layer.gates["c"] = asyncio.Event()
    items = [await pipe.put("c", {"n": n}, key="k", ack=acker(acks, n)) for n in range(3)]
    layer.gates["c"].set()
    await asyncio.wait_for(pipe.drained(), 5)
    assert layer.sent == [0, 2] and acks == [0, 1, 2]
    assert failed == [items[1]] and items[1].failed and not items[1].handed
    assert metrics.value("test_handoff_invalid_total") == 1
    assert "does not match the spec" in caplog.text


async def test_prepare_makes_a_batchs_messages_together_and_an_item_it_leaves_out_is_skipped():
    layer, acks = FakeLayer(), []
    prepared: list[list[int]] = []

    async def prepare(items: list[HandoffItem]) -> None:
        prepared.append([item.context for item in items])
        for item in items:
            if item.context != 2:
                item.message = {"n": item.context}

    pipe = handoff(layer, linger=0.01, prepare=prepare)
    for n in range(4):
        await pipe.put("c", None, context=n, ack=acker(acks, n))
    await asyncio.wait_for(pipe.drained(), 5)
    assert prepared == [[0, 1, 2, 3]]
    assert layer.calls == [("c", [0, 1, 3])] and acks == [0, 1, 3]


async def test_abandoned_items_are_not_handed_off_nor_acked_and_kept_ones_go_on():
    layer, acks = FakeLayer(), []
    pipe = handoff(layer, batched=False, ack_in_order=True)
    layer.gates["c"] = asyncio.Event()
    old, new = object(), object()
    await pipe.put("c", {"n": 1}, key="k", ack=acker(acks, 1), source=old)  # its send gets under way
    await pipe.put("c", {"n": 2}, key="k", ack=acker(acks, 2), source=old)
    await pipe.put("c", {"n": 3}, key="k", ack=acker(acks, 3), source=old, context="keep")
    await turns()
    assert pipe.abandon(old, keep=lambda item: item.context == "keep") == 2
    await pipe.put("c", {"n": 4}, key="k", ack=acker(acks, 4), source=new)
    layer.gates["c"].set()
    await asyncio.wait_for(pipe.drained(), 5)
    assert layer.sent == [1, 3, 4]  # 1 was under way and finishes; 2 is left out
    assert acks == [3, 4]


async def test_drain_waits_for_the_items_and_gives_up_after_the_grace():
    layer = FakeLayer()
    pipe = handoff(layer)
    layer.gates["c"] = asyncio.Event()
    await pipe.put("c", {"n": 0})
    assert len(pipe) == 1
    assert not await pipe.drain(0.05), "drain said done with an item still under way"
    layer.gates["c"].set()
    assert await pipe.drain(5)
    assert len(pipe) == 0
    layer.gates["c"].clear()
    await pipe.put("c", {"n": 1})
    await pipe.close()
    assert layer.sent == [0]


@pytest.mark.parametrize("batched", [True, False])
async def test_a_refusing_layer_is_retried_until_it_takes_the_item(batched):
    layer, acks = FakeLayer(), []
    metrics = Metrics()
    pipe = handoff(layer, batched=batched, metrics=metrics)
    layer.refusing = 3
    await pipe.put("c", {"n": 0}, key="k", ack=acker(acks, 0))
    await asyncio.wait_for(pipe.drained(), 5)
    assert layer.sent == [0] and acks == [0]
    assert metrics.value("test_handoff_retries_total") == 3
