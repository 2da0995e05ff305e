"""Per consumer channel: how many messages wait and how old the oldest is,
read from the layer's Redis at scrape time."""

from __future__ import annotations

import asyncio
import re
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import websockets

from gateways.core.backlog import channel_backlog, publish_backlog
from gateways.core.config import LayerConfig
from gateways.core.layer import build_layer, close_layer
from gateways.core.metrics import Metrics
from servers import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "websocket"))
from ws_stack import ORIGIN, start_gateway, write_config  # noqa: E402


@pytest.mark.parametrize("batched", [True, False])
async def test_depth_and_oldest_age_follow_the_sorted_set(redis_server, batched):
    layer = build_layer(LayerConfig(url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}", expiry=60,
                                    batched=batched))
    try:
        for n in range(3):
            await layer.send("orders.in", {"type": "test.message", "n": n})
        # One message as if sent 30 s ago.
        old = layer.serialize({"type": "test.message", "n": "old"})
        await layer.connection(0).zadd(layer.prefix + "orders.in", {old: time.time() - 30})
        backlog = await channel_backlog(layer, ["orders.in", "orders.idle"])
        depth, age = backlog["orders.in"]
        assert depth == 4
        assert 30 <= age < 60
        assert backlog["orders.idle"] == (0, 0.0)
        assert (await layer.receive("orders.in"))["n"] == "old"  # the oldest goes first
        # The batched layer takes what waits into the receiving process at once.
        assert (await channel_backlog(layer, ["orders.in"]))["orders.in"][0] == (0 if batched else 3)
    finally:
        await close_layer(layer)


async def test_memory_layer_backlog():
    layer = build_layer(LayerConfig(url="memory://"))
    await layer.send("orders.in", {"type": "test.message"})
    metrics = Metrics()
    publish_backlog(metrics, layer, ["orders.in", "orders.idle"])
    text = await metrics.scrape()
    assert 'gateway_channel_queue_depth{channel="orders.in"} 1.0' in text
    assert 'gateway_channel_queue_depth{channel="orders.idle"} 0.0' in text


async def test_unreadable_layer_drops_the_gauges_instead_of_keeping_stale_ones(private_redis):
    layer = build_layer(LayerConfig(url=private_redis.url, prefix="t"))
    metrics = Metrics()
    publish_backlog(metrics, layer, ["orders.in"])
    try:
        await layer.send("orders.in", {"type": "test.message"})
        assert 'gateway_channel_queue_depth{channel="orders.in"} 1.0' in await metrics.scrape()
        private_redis.close()
        text = await metrics.scrape()
        assert "gateway_channel_queue_depth{" not in text
        assert "gateway_scrape_errors_total{" in text
    finally:
        await close_layer(layer)


def _metric(text: str, name: str, channel: str) -> float | None:
    found = re.search(rf'^gateway_{name}{{channel="{re.escape(channel)}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


@pytest.mark.e2e
async def test_gateway_metrics_show_what_waits_for_a_missing_consumer(redis_server, tmp_path):
    config, port = write_config(tmp_path, redis_server.url)
    gateway = start_gateway(config, port)
    try:
        import yaml

        listen = yaml.safe_load(config.read_text())["websocket"]["health"]["listen"]

        def scrape() -> str:
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
                return response.read().decode()

        assert _metric(scrape(), "channel_queue_depth", "websocket.nobody") == 0
        # No worker consumes websocket.nobody: the handshake's websocket.connect waits there.
        async with websockets.connect(f"ws://127.0.0.1:{port}/auto/", origin=ORIGIN, open_timeout=15):
            pass
        await asyncio.to_thread(wait_until, lambda: _metric(scrape(), "channel_queue_depth", "websocket.nobody"),
                                10, "websocket.nobody's depth on /metrics")
        await asyncio.to_thread(
            wait_until, lambda: _metric(scrape(), "channel_oldest_message_age_seconds", "websocket.nobody"),
            10, "the oldest message's age growing")
        text = scrape()
        assert _metric(text, "channel_queue_depth", "websocket.echo") == 0
        assert _metric(text, "channel_oldest_message_age_seconds", "websocket.echo") == 0
    finally:
        gateway.stop()
