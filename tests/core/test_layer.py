"""The channel layer against a real Redis: idle receives, bursts, pool bounds, Django settings."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis import asyncio as aioredis
from servers import async_wait_until

from gateways.core.config import LayerConfig, load_config, parse_config
from gateways.core.runtime import HandoffError, Runtime
from gateways.core.layer import build_layer, channel_layers_setting, close_layer
from gateways.core.layer_classes import GatewayRedisChannelLayer


def layer_for(url: str, **kwargs) -> GatewayRedisChannelLayer:
    return build_layer(LayerConfig(url=url, prefix=f"t{uuid.uuid4().hex[:8]}", **kwargs))


async def test_receive_survives_idling_past_redis_py_socket_timeout(redis_server):
    """redis-py 8's 5 s socket timeout equals channels_redis's 5 s BZPOPMIN:
    a stock receive that idles fails with TimeoutError. Ours must not."""
    layer = layer_for(redis_server.url)
    admin = aioredis.from_url(redis_server.url)
    before = await blocking_pops(admin)
    started = time.monotonic()
    receiver = asyncio.create_task(layer.receive("idle.channel"))

    async def idled_past_socket_timeout() -> bool:
        # Idling past redis-py's 5 s is the point, so time is part of the
        # condition; the pops Redis answered empty show the receive was
        # blocked in Redis all along and kept asking again.
        return time.monotonic() - started > 5.5 and await blocking_pops(admin) >= before + 2

    await async_wait_until(idled_past_socket_timeout, timeout=30,
                           what="the receive idled 5.5 s, asking Redis again after empty blocking pops")
    await admin.aclose()
    assert not receiver.done(), receiver.exception() if receiver.done() else None
    await layer_for_send(redis_server.url, layer.prefix).send("idle.channel", {"type": "x.y", "n": 1})
    assert await asyncio.wait_for(receiver, 10) == {"type": "x.y", "n": 1}
    await close_layer(layer)


async def blocking_pops(admin: aioredis.Redis) -> int:
    """How many blocking pops (BZMPOP, or BZPOPMIN before Redis 7) this Redis ran."""
    stats = await admin.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("bzmpop", "bzpopmin"))


def layer_for_send(url: str, prefix: str) -> GatewayRedisChannelLayer:
    return build_layer(LayerConfig(url=url, prefix=prefix))


async def test_burst_above_stock_capacity_and_bytes_round_trip(redis_server):
    layer = layer_for(redis_server.url)
    await asyncio.gather(*(layer.send("burst", {"type": "b.b", "payload": bytes([i % 256]) * 10, "i": i})
                           for i in range(500)))
    received = [await layer.receive("burst") for _ in range(500)]
    assert sorted(m["i"] for m in received) == list(range(500))
    assert all(isinstance(m["payload"], bytes) for m in received)
    await close_layer(layer)


async def test_more_concurrent_operations_than_connections_wait_instead_of_failing(redis_server):
    layer = layer_for(redis_server.url, max_connections=4)
    await asyncio.gather(*(layer.send(f"pool.{i % 7}", {"type": "p.p", "i": i}) for i in range(300)))
    counts = [await layer.receive(f"pool.{i % 7}") for i in range(300)]
    assert len(counts) == 300
    await close_layer(layer)


async def test_runtime_send_many_splits_at_the_layers_send_batch_and_keeps_a_prefix(redis_server, tmp_path):
    """More messages than one round trip holds go in several, in order; once the
    channel is full the rest are refused and what was taken is a prefix."""
    path = tmp_path / "gateway.yaml"
    path.write_text("email: {listen: '127.0.0.1:0', domains: [demo.local], relay: 'console://'}\n")
    config = load_config(path)
    layer = layer_for(redis_server.url, capacity=5)
    layer.send_batch = 2
    runtime = Runtime(config, config.sections["email"], "email", layer=layer)

    def acks(ids: range) -> list[dict]:
        return [{"type": "email.ack", "id": str(i)} for i in ids]

    assert await runtime.send_many("many", acks(range(0, 3))) == 3
    assert await runtime.send_many("many", acks(range(3, 8))) == 2
    with pytest.raises(HandoffError):
        await runtime.send_many("many", acks(range(8, 11)))
    assert [(await layer.receive("many"))["id"] for _ in range(5)] == ["0", "1", "2", "3", "4"]
    await close_layer(layer)


async def test_process_channel_receives_every_reply_channel(redis_server):
    layer = layer_for(redis_server.url)
    channels = [await layer.new_channel() for _ in range(5)]
    for channel in channels:
        await layer.send(channel, {"type": "r.r", "to": channel})
    got = [await layer.receive_single(layer.process_channel) for _ in channels]
    assert [c for c, _ in got] == channels
    assert all(m["to"] == c for c, m in got)
    await close_layer(layer)


async def test_memory_layer_has_the_same_process_channel():
    layer = build_layer(LayerConfig(url="memory://"))
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "m.m"})
    assert await layer.receive_single(layer.process_channel) == (channel, {"type": "m.m"})


def test_django_setting_comes_from_the_same_yaml(tmp_path, monkeypatch):
    path = tmp_path / "g.yaml"
    path.write_text("layer:\n  url: redis://127.0.0.1:6390/2\n  capacity: 5000\n  expiry: 30\n  batched: false\n")
    monkeypatch.delenv("GATEWAY_LAYER_URL", raising=False)
    setting = channel_layers_setting(str(path))["default"]
    assert setting["BACKEND"] == "gateways.core.layer_classes.GatewayRedisChannelLayer"
    assert setting["CONFIG"]["hosts"] == [{"address": "redis://127.0.0.1:6390/2"}]
    assert (setting["CONFIG"]["capacity"], setting["CONFIG"]["expiry"]) == (5000, 30)
    monkeypatch.setenv("GATEWAY_LAYER_URL", "redis://127.0.0.1:7000/0")
    assert channel_layers_setting(str(path))["default"]["CONFIG"]["hosts"] == [{"address": "redis://127.0.0.1:7000/0"}]


def test_sentinel_url_becomes_a_sentinel_host():
    config = parse_config("layer:\n  url: sentinel://s1:26379,s2:26380/mymaster/1\n", "f.yaml", {}, {})
    from gateways.core.layer import layer_kwargs

    host = layer_kwargs(config.layer)["hosts"][0]
    assert host == {"master_name": "mymaster", "sentinels": [("s1", 26379), ("s2", 26380)], "db": 1}


def test_stock_capacity_default_is_raised():
    assert LayerConfig().capacity >= 1000


@pytest.mark.integration
@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0"])
async def test_unreachable_layer_raises_connection_errors_not_hangs(url):
    layer = layer_for(url)
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(layer.send("x", {"type": "a.b"}), 15)
    assert "connect" in str(info.value).lower() or isinstance(info.value, OSError)


async def test_reply_channels_share_a_larger_capacity(redis_server):
    layer = layer_for(redis_server.url, capacity=10, reply_capacity=300)
    channels = [await layer.new_channel() for _ in range(300)]
    await asyncio.gather(*(layer.send(c, {"type": "r.r"}) for c in channels))  # 300 > capacity 10
    from channels.exceptions import ChannelFull

    with pytest.raises(ChannelFull):
        await layer.send(channels[0], {"type": "r.r"})
    await close_layer(layer)
