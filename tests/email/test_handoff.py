"""The hand-off on a real spool and the in-memory layer: deadlines of acknowledged mail do not
pile up; the linger hands deliveries that arrive together off together, in one send, and
what the layer did not take goes again."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateways.core.config import load_config
from gateways.core.runtime import HandoffError, Runtime
from gateways.email.handoff import TIMERS_SLACK, Handoff
from gateways.email.protocol import parse_message
from gateways.email.spool import Spool, SpoolEntry, new_id


def _handoff(tmp_path, linger: float = 0.0, parse=None) -> tuple[Runtime, Spool, Handoff]:
    path = tmp_path / "gateway.yaml"
    path.write_text("layer: {url: 'memory://local', capacity: 100000}\n"
                    "email: {listen: '127.0.0.1:0', domains: [demo.local], relay: 'console://'}\n")
    config = load_config(path)
    runtime = Runtime(config, config.sections["email"], "email")
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.open()
    handoff = Handoff(runtime, spool, "email.gw!", "email.dead", ack_timeout=60, max_attempts=3, concurrency=4,
                      linger=linger, parse=parse)
    handoff.start()
    return runtime, spool, handoff


def _add(spool: Spool, handoff: Handoff, n: int) -> None:
    entry = SpoolEntry(new_id(), {"mail_from": "a@x.test", "rcpt_to": ["b@demo.local"]},
                       [{"channel": "email.receive", "recipients": ["b@demo.local"], "kwargs": {}}],
                       b"Subject: %d\r\n\r\nbody\r\n" % n)
    spool.write(entry)
    handoff.add(entry)


async def _stop(runtime: Runtime) -> None:
    for task in list(runtime._tasks):
        task.cancel()
    await asyncio.gather(*runtime._tasks, return_exceptions=True)


async def test_deadlines_of_acknowledged_deliveries_are_dropped(tmp_path):
    runtime, spool, handoff = _handoff(tmp_path)
    total = 3 * TIMERS_SLACK
    try:
        for n in range(total):
            _add(spool, handoff, n)
        for _ in range(total):
            message = await asyncio.wait_for(runtime.layer.receive("email.receive"), 10)
            assert await handoff.ack(message["id"])
        assert handoff.pending == 0
        assert len(handoff._timers) <= TIMERS_SLACK + 1, "deadlines of acknowledged mail were kept"
    finally:
        await _stop(runtime)


def _count_sends(runtime: Runtime) -> list[int]:
    """Record how many messages each trip to the layer carried (``send`` counts as one)."""
    trips: list[int] = []
    send, send_many = runtime.send, runtime.send_many
    inside_send_many = False  # a layer without batching sends one by one: still one trip asked for

    async def counted_send(channel, message):
        if not inside_send_many:
            trips.append(1)
        await send(channel, message)

    async def counted_send_many(channel, messages):
        nonlocal inside_send_many
        trips.append(len(messages))
        inside_send_many = True
        try:
            return await send_many(channel, messages)
        finally:
            inside_send_many = False

    runtime.send, runtime.send_many = counted_send, counted_send_many
    return trips


async def test_linger_hands_deliveries_that_arrive_together_off_together(tmp_path):
    runtime, spool, handoff = _handoff(tmp_path, linger=0.3)
    trips = _count_sends(runtime)
    try:
        for n in range(4):  # in one go, well within the linger whatever the machine's load
            _add(spool, handoff, n)
        await asyncio.sleep(0)
        assert trips == [], "a delivery left before the linger was over"
        for _ in range(4):
            await asyncio.wait_for(runtime.layer.receive("email.receive"), 10)
        assert trips == [4], "deliveries that arrived within the linger left apart"
    finally:
        await _stop(runtime)


async def test_without_linger_each_delivery_leaves_without_waiting_for_another(tmp_path):
    runtime, spool, handoff = _handoff(tmp_path, linger=0.0)
    trips = _count_sends(runtime)
    try:
        for n in range(4):
            _add(spool, handoff, n)
            # No later delivery is needed to push this one out.
            message = await asyncio.wait_for(runtime.layer.receive("email.receive"), 10)
            assert message["raw"] == b"Subject: %d\r\n\r\nbody\r\n" % n
        assert trips == [1, 1, 1, 1]
    finally:
        await _stop(runtime)


@pytest.mark.parametrize("outcome", ["refused", "part taken"])
async def test_a_lingers_deliveries_go_in_one_send_and_what_it_did_not_take_goes_again(tmp_path, outcome):
    runtime, spool, handoff = _handoff(tmp_path, linger=0.05)
    calls: list[int] = []
    send_many = runtime.send_many

    async def first_fails(channel, messages):
        calls.append(len(messages))
        if len(calls) > 1:
            return await send_many(channel, messages)
        if outcome == "refused":
            raise HandoffError("unavailable", "the test's layer is down")
        return await send_many(channel, messages[:1])

    runtime.send_many = first_fails
    try:
        for batch in (range(3), range(3, 7)):
            for n in batch:
                _add(spool, handoff, n)
            got = [await asyncio.wait_for(runtime.layer.receive("email.receive"), 10) for _ in batch]
            assert sorted(m["raw"] for m in got) == sorted(b"Subject: %d\r\n\r\nbody\r\n" % n for n in batch)
        await asyncio.sleep(0.1)
        leftover = runtime.layer.channels.get("email.receive")
        assert leftover is None or leftover.empty(), "a delivery was handed off twice"
        # The first linger's three went together; what the layer did not take went again
        # (and only that); the second linger's four together.
        assert calls[0] == 3 and calls[-1] == 4
        assert sum(calls[1:-1]) == (3 if outcome == "refused" else 2) * (len(calls) - 2)
        assert all(d.attempts == 1 for d in handoff.deliveries.values()), "a hand-off was counted twice"
    finally:
        await _stop(runtime)


@pytest.mark.parametrize("linger", [0.0, 0.1])
async def test_parses_are_asked_once_per_message_and_together_after_the_linger(tmp_path, linger):
    asked: list[tuple[float, bytes]] = []

    def parse(raw: bytes) -> asyncio.Future:
        asked.append((time.monotonic(), raw))
        future = asyncio.get_running_loop().create_future()
        future.set_result({**parse_message(raw), "subject": "parsed elsewhere"})
        return future

    runtime, spool, handoff = _handoff(tmp_path, linger, parse)
    try:
        began = time.monotonic()
        for n in range(3):
            _add(spool, handoff, n)
            await asyncio.sleep(0.01)
        messages = [await asyncio.wait_for(runtime.layer.receive("email.receive"), 10) for _ in range(3)]
    finally:
        await _stop(runtime)
    assert sorted(raw for _, raw in asked) == sorted(message["raw"] for message in messages)
    assert all(message["subject"] == "parsed elsewhere" for message in messages)
    times = [when for when, _ in asked]
    if linger:
        assert min(times) >= began + linger and max(times) - min(times) < 0.005, "not asked together after the linger"
    else:
        assert max(times) - began < 0.05, "not asked as each message came"
