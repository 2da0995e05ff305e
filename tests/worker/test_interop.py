"""The batched layer and stock channels_redis on one real Redis, in both directions.

Every test pairs a stock ``channels_redis.core.RedisChannelLayer`` with a
``BatchedRedisChannelLayer`` on the same prefix, and checks one side sees
exactly what the other wrote: named channels, reply channels, groups,
capacity (ChannelFull) and expiry.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from redis import asyncio as aioredis

from gateways.core.batched import BatchedRedisChannelLayer
from gateways.core.config import parse_config
from gateways.core.layer import build_layer, channel_layers_setting
from servers import async_wait_until

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def layers(redis_server):
    """A maker of stock or batched layers sharing one fresh prefix."""
    prefix = f"io{uuid.uuid4().hex[:8]}"

    def make(kind: str, **kwargs):
        cls = RedisChannelLayer if kind == "stock" else BatchedRedisChannelLayer
        hosts = [redis_server.url] if kind == "stock" else [{"address": redis_server.url}]
        return cls(hosts=hosts, prefix=prefix, **kwargs)

    return make


async def blocked_clients(url: str, at_least: int | None = None) -> int | bool:
    """How many clients this Redis holds blocked in a pop (or whether at least ``at_least``)."""
    admin = aioredis.from_url(url)
    try:
        count = (await admin.info("clients"))["blocked_clients"]
    finally:
        await admin.aclose()
    return count if at_least is None else count >= at_least


async def close(*layers):
    for layer in layers:
        await layer.close_pools()


def payload(i: int) -> dict:
    return {"type": "test.message", "n": i, "raw": bytes([i % 256, 0, 255]), "text": f"é{i}", "none": None,
            "nested": {"list": [1, 2.5, True]}}


@pytest.mark.parametrize("direction", ["stock->batched", "batched->stock"])
async def test_named_channel_both_ways_in_order_with_bytes(layers, direction):
    stock, batched = layers("stock"), layers("batched")
    sender, receiver = (stock, batched) if direction == "stock->batched" else (batched, stock)
    for i in range(30):
        await sender.send("work", payload(i))
    got = [await asyncio.wait_for(receiver.receive("work"), 10) for _ in range(30)]
    assert got == [payload(i) for i in range(30)]
    await close(stock, batched)


async def test_concurrent_batched_sends_keep_their_order_for_a_stock_receiver(layers):
    stock, batched = layers("stock"), layers("batched", capacity=10000)
    # All queued in one tick: they go out in one or a few round trips.
    await asyncio.gather(*(batched.send("burst", {"type": "t", "n": i}) for i in range(2000)))
    got = [(await asyncio.wait_for(stock.receive("burst"), 10))["n"] for _ in range(2000)]
    assert got == list(range(2000))
    await close(stock, batched)


@pytest.mark.parametrize("direction", ["stock->batched", "batched->stock"])
async def test_reply_channels_both_ways(layers, direction):
    stock, batched = layers("stock"), layers("batched")
    sender, receiver = (stock, batched) if direction == "stock->batched" else (batched, stock)
    channels = [await receiver.new_channel() for _ in range(5)]
    for round_ in range(3):
        for index, channel in enumerate(channels):
            await sender.send(channel, {"type": "reply", "to": index, "round": round_})
    for index, channel in enumerate(channels):
        got = [await asyncio.wait_for(receiver.receive(channel), 10) for _ in range(3)]
        assert got == [{"type": "reply", "to": index, "round": r} for r in range(3)]
    await close(stock, batched)


async def test_one_loop_receives_every_reply_channel_of_the_process(layers):
    stock, batched = layers("stock"), layers("batched")
    channels = [await batched.new_channel() for _ in range(50)]
    for index, channel in enumerate(channels):
        await stock.send(channel, {"type": "reply", "to": index})
    seen = {}
    for _ in range(50):
        target, message = await asyncio.wait_for(batched.receive_single(batched.process_channel), 10)
        seen[target] = message["to"]
    assert seen == {channel: index for index, channel in enumerate(channels)}
    await close(stock, batched)


@pytest.mark.parametrize("adder,sender", [("stock", "batched"), ("batched", "stock"), ("batched", "batched")])
async def test_groups_across_the_two_layers(layers, adder, sender):
    stock, batched = layers("stock"), layers("batched")
    side = {"stock": stock, "batched": batched}
    # Members on both sides: a reply channel of each process and a named channel.
    stock_member, batched_member = await stock.new_channel(), await batched.new_channel()
    for member in (stock_member, batched_member, "group.named"):
        await side[adder].group_add("room", member)
    await side[sender].group_send("room", {"type": "chat", "text": "hi"})
    assert await asyncio.wait_for(stock.receive(stock_member), 10) == {"type": "chat", "text": "hi"}
    assert await asyncio.wait_for(batched.receive(batched_member), 10) == {"type": "chat", "text": "hi"}
    assert await asyncio.wait_for(stock.receive("group.named"), 10) == {"type": "chat", "text": "hi"}
    await side[adder].group_discard("room", batched_member)
    await side[sender].group_send("room", {"type": "chat", "text": "again"})
    assert await asyncio.wait_for(stock.receive(stock_member), 10) == {"type": "chat", "text": "again"}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(batched.receive(batched_member), 1.5)
    await close(stock, batched)


@pytest.mark.parametrize("filler,checker", [("stock", "batched"), ("batched", "stock"), ("batched", "batched")])
async def test_capacity_is_shared_and_raises_channel_full(layers, filler, checker):
    side = {"stock": layers("stock", capacity=5), "batched": layers("batched", capacity=5)}
    results = await asyncio.gather(*(side[filler].send("small", {"type": "t", "n": i}) for i in range(5)),
                                   return_exceptions=True)
    assert results == [None] * 5
    with pytest.raises(ChannelFull):
        await side[checker].send("small", {"type": "t", "n": 5})
    # A burst past capacity: exactly the excess is refused, each sender told.
    outcome = await asyncio.gather(*(side["batched"].send("burst", {"type": "t", "n": i}) for i in range(8)),
                                   return_exceptions=True)
    assert [type(r).__name__ for r in outcome] == ["NoneType"] * 5 + ["ChannelFull"] * 3
    # Room again after a receive, on either side.
    await side["stock"].receive("small")
    await side[checker].send("small", {"type": "t", "n": 6})
    await close(*side.values())


async def test_per_channel_capacity_patterns_apply(layers):
    batched = layers("batched", capacity=100, channel_capacity={"tiny.*": 2})
    await batched.send("tiny.one", {"type": "t"})
    await batched.send("tiny.one", {"type": "t"})
    with pytest.raises(ChannelFull):
        await batched.send("tiny.one", {"type": "t"})
    await batched.send("other", {"type": "t"})
    await close(batched)


@pytest.mark.parametrize("writer,trimmer", [("stock", "batched"), ("batched", "stock")])
async def test_expired_messages_are_dropped_on_the_next_send(layers, redis_server, writer, trimmer):
    side = {"stock": layers("stock", expiry=1), "batched": layers("batched", expiry=1)}
    await side[writer].send("old", {"type": "t", "n": "stale"})
    sent = time.time()  # the message's score is at most this
    # channels_redis trims with whole seconds: a message is gone once int(now) -
    # expiry reaches its score. Deliberate: the clock must pass that, at most 2 s.
    await async_wait_until(lambda: int(time.time()) - 1 >= sent, 5, "the stale message expired")
    await side[trimmer].send("old", {"type": "t", "n": "fresh"})
    got = await asyncio.wait_for(side[writer].receive("old"), 10)
    assert got == {"type": "t", "n": "fresh"}
    await close(*side.values())


async def test_batched_send_sets_the_key_to_expire_like_stock(layers, redis_server):
    batched = layers("batched", expiry=60)
    await batched.send("ttl", {"type": "t"})
    client = aioredis.from_url(redis_server.url)
    ttl = await client.ttl(f"{batched.prefix}ttl")
    await client.aclose()
    assert 0 < ttl <= 60
    await close(batched)


async def test_encrypted_messages_interoperate(layers):
    stock = layers("stock", symmetric_encryption_keys=[KEY])
    batched = layers("batched", symmetric_encryption_keys=[KEY])
    await stock.send("secret", {"type": "t", "raw": b"\x01"})
    assert await batched.receive("secret") == {"type": "t", "raw": b"\x01"}
    await batched.send("secret", {"type": "t", "raw": b"\x02"})
    assert await stock.receive("secret") == {"type": "t", "raw": b"\x02"}
    await close(stock, batched)


async def test_a_receive_cancelled_mid_wait_loses_nothing(layers, redis_server):
    stock, batched = layers("stock"), layers("batched")
    before = await blocked_clients(redis_server.url)
    waiting = asyncio.ensure_future(batched.receive("quiet"))
    await async_wait_until(lambda: blocked_clients(redis_server.url, before + 1), 10,
                           "the fetch is blocked in Redis")
    waiting.cancel()
    await stock.send("quiet", {"type": "t", "n": 1})
    assert await asyncio.wait_for(batched.receive("quiet"), 10) == {"type": "t", "n": 1}
    await close(stock, batched)


async def test_a_channel_nobody_reads_is_not_drained(layers, redis_server):
    stock, batched = layers("stock"), layers("batched")
    await stock.send("a", {"type": "t", "n": 1})
    assert await batched.receive("a") == {"type": "t", "n": 1}
    for i in range(3):
        await stock.send("a", {"type": "t", "n": i})
    # A fetch left running would take them now; nothing to await for "does not
    # happen", so give it time to misbehave.
    await asyncio.sleep(0.5)
    # Nobody waits on "a" now: the messages stay in Redis for any receiver.
    assert [(await asyncio.wait_for(stock.receive("a"), 10))["n"] for _ in range(3)] == [0, 1, 2]
    await close(stock, batched)


async def test_take_buffered_returns_what_was_fetched_but_not_received(layers):
    stock, batched = layers("stock"), layers("batched")
    for i in range(10):
        await stock.send("pre", {"type": "t", "n": i})
    assert (await batched.receive("pre"))["n"] == 0  # one round trip fetched all ten
    await batched.stop_fetching()
    assert [m["n"] for _t, m in batched.take_buffered("pre")] == list(range(1, 10))
    await close(stock, batched)


def test_config_chooses_the_batched_layer_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_LAYER_URL", raising=False)
    path = tmp_path / "g.yaml"
    path.write_text("layer:\n  url: redis://127.0.0.1:6390/2\n")
    setting = channel_layers_setting(str(path))["default"]
    assert setting["BACKEND"] == "gateways.core.batched.BatchedRedisChannelLayer"
    config = parse_config("layer:\n  url: redis://127.0.0.1:6390/2\n", "f.yaml", {}, {})
    assert isinstance(build_layer(config.layer), BatchedRedisChannelLayer)
    config = parse_config("layer:\n  url: redis://127.0.0.1:6390/2\n  batched: false\n", "f.yaml", {}, {})
    assert not isinstance(build_layer(config.layer), BatchedRedisChannelLayer)


async def test_a_dead_redis_fails_sends_and_receives_with_layer_errors(private_redis):
    batched = BatchedRedisChannelLayer(hosts=[{"address": private_redis.url}], prefix="dead")
    await batched.send("x", {"type": "t"})
    private_redis.stop()
    with pytest.raises((ConnectionError, OSError, Exception)) as send_error:
        await asyncio.wait_for(batched.send("x", {"type": "t"}), 20)
    assert not isinstance(send_error.value, (asyncio.TimeoutError, ChannelFull))
    with pytest.raises(Exception) as receive_error:
        await asyncio.wait_for(batched.receive("y"), 20)
    assert not isinstance(receive_error.value, asyncio.TimeoutError)
    private_redis.start()
    started = time.monotonic()
    while True:  # the pool reconnects on its own
        try:
            await batched.send("x", {"type": "t", "n": "back"})
            break
        except Exception:
            assert time.monotonic() - started < 20
            await asyncio.sleep(0.2)
    await close(batched)


async def test_receive_without_bzmpop_falls_back_to_bzpopmin_and_zpopmin(layers):
    """Redis before 7.0 has no BZMPOP: the pipelined pair does the same job."""
    stock, batched = layers("stock"), layers("batched")
    batched._bzmpop = False
    for i in range(12):
        await stock.send("old-redis", {"type": "t", "n": i})
    got = [(await asyncio.wait_for(batched.receive("old-redis"), 10))["n"] for _ in range(12)]
    assert got == list(range(12))
    await close(stock, batched)


async def test_a_redis_restart_between_round_trips_is_retried_on_a_fresh_connection(private_redis):
    batched = BatchedRedisChannelLayer(hosts=[{"address": private_redis.url}], prefix="restart")
    await batched.send("x", {"type": "t", "n": 1})
    private_redis.restart()
    await batched.send("x", {"type": "t", "n": 2})  # the kept connection is dead: one retry
    assert (await asyncio.wait_for(batched.receive("x"), 10))["n"] == 2
    await close(batched)


async def test_closing_returns_prefetched_messages_of_named_channels_in_order(layers):
    """A gateway stopping with a fetched batch in hand gives it back to Redis."""
    stock, batched = layers("stock"), layers("batched")
    for i in range(10):
        await stock.send("outbound", {"type": "t", "n": i})
    assert (await batched.receive("outbound"))["n"] == 0  # the other nine are buffered
    await batched.close_pools()
    got = [(await asyncio.wait_for(stock.receive("outbound"), 10))["n"] for _ in range(9)]
    assert got == list(range(1, 10))
    await close(stock)


async def test_stop_fetching_releases_a_blocked_fetch_at_once_without_taking_anything(layers, redis_server):
    stock = layers("stock")
    batched = layers("batched", block_timeout=30)  # at most half the socket timeout: 15 s
    before = await blocked_clients(redis_server.url)
    waiting = asyncio.ensure_future(batched.receive("idle"))
    # blocked in BZMPOP for up to 15 s
    await async_wait_until(lambda: blocked_clients(redis_server.url, before + 1), 10,
                           "the fetch is blocked in Redis")
    waiting.cancel()
    # CLIENT UNBLOCK ends it now; without it this would take the whole 15 s block.
    await asyncio.wait_for(batched.stop_fetching(), 10)
    await stock.send("idle", {"type": "t", "n": 1})
    assert await asyncio.wait_for(stock.receive("idle"), 10) == {"type": "t", "n": 1}
    await close(stock, batched)


@pytest.mark.parametrize("sender", ["stock", "batched"])
async def test_group_send_skips_full_members_and_reaches_the_others(layers, sender):
    side = {"stock": layers("stock", capacity=2), "batched": layers("batched", capacity=2)}
    for member in ("full.one", "free.one"):
        await side["stock"].group_add("mixed", member)
    await side["stock"].send("full.one", {"type": "t", "n": 0})
    await side["stock"].send("full.one", {"type": "t", "n": 1})
    await side[sender].group_send("mixed", {"type": "t", "n": "group"})  # no ChannelFull raised
    assert await asyncio.wait_for(side["batched"].receive("free.one"), 10) == {"type": "t", "n": "group"}
    got = [(await asyncio.wait_for(side["stock"].receive("full.one"), 10))["n"] for _ in range(2)]
    assert got == [0, 1]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(side["stock"].receive("full.one"), 1.5)
    await close(*side.values())


async def test_send_many_lands_in_order_after_earlier_sends_and_stores_a_prefix_when_full(layers):
    stock, batched = layers("stock"), layers("batched", capacity=10, send_batch=8)
    await batched.send("many", payload(0))
    # Concurrent sends and send_many calls of one loop land in the order they were made.
    results = await asyncio.gather(batched.send_many("many", [payload(i) for i in range(1, 5)]),
                                   batched.send("many", payload(5)),
                                   batched.send_many("many", [payload(i) for i in range(6, 14)]))
    # 14 messages for a capacity of 10: the last send_many gets the first 4 in, the rest refused.
    assert results == [4, None, 4]
    got = [await asyncio.wait_for(stock.receive("many"), 10) for _ in range(10)]
    assert got == [payload(i) for i in range(10)]
    # The refused ones, sent again, follow in order.
    assert await batched.send_many("many", [payload(i) for i in range(10, 14)]) == 4
    assert [await asyncio.wait_for(stock.receive("many"), 10) for _ in range(4)] == [payload(i) for i in range(10, 14)]
    with pytest.raises(ValueError):
        await batched.send_many("many", [payload(0)] * 9)  # more than one round trip's worth
    await close(stock, batched)


async def test_send_many_is_never_split_across_round_trips(layers):
    stock, batched = layers("stock"), layers("batched", capacity=10000, send_batch=10)
    # 7 single sends then units of 6: batches end before a unit that would not fit whole.
    calls = []
    write = batched._write

    async def recording_write(state, batch):
        calls.append(len(batch))
        return await write(state, batch)

    batched._write = recording_write
    sends = [batched.send("unit", payload(i)) for i in range(7)]
    many = [batched.send_many("unit", [payload(100 + 6 * k + j) for j in range(6)]) for k in range(3)]
    results = await asyncio.gather(*sends, *many)
    assert results[7:] == [6, 6, 6]
    assert calls == [7, 6, 6, 6]
    got = [(await asyncio.wait_for(stock.receive("unit"), 10))["n"] for _ in range(25)]
    assert got == list(range(7)) + list(range(100, 118))
    await close(stock, batched)
