"""How far the consumers are behind: each consumer channel's queue depth and
the age of its oldest message, read from the layer when ``/metrics`` is scraped.

channels_redis (and the batched layer, which shares its data) keeps a channel
as the sorted set ``<prefix><channel>``, each message scored by the
``time.time()`` of its send. Every member counts, as a consumer would take
it: the layer drops members older than ``expiry`` only when the channel is
next written to (and the whole key ``expiry`` seconds after the last send).
"""

from __future__ import annotations

import time
from typing import Any

from gateways.core.metrics import Metrics

DEPTH = "channel_queue_depth"
AGE = "channel_oldest_message_age_seconds"


async def channel_backlog(layer: Any, channels: list[str]) -> dict[str, tuple[int, float]]:
    """``{channel: (messages waiting, age of the oldest in seconds)}`` for ``channels``
    (age 0 when none waits); empty for a layer that is neither Redis nor in-memory."""
    now = time.time()
    if hasattr(layer, "connection") and hasattr(layer, "prefix"):
        return await _redis_backlog(layer, channels, now)
    queues = getattr(layer, "channels", None)
    if isinstance(queues, dict):  # channels' InMemoryChannelLayer: a queue of (expires, message)
        backlog = {}
        for channel in channels:
            queue = queues.get(channel)
            items = list(getattr(queue, "_queue", ())) if queue is not None else []
            live = [expires for expires, _message in items if expires > now]
            oldest = min(live) - layer.expiry if live else now
            backlog[channel] = (len(live), max(0.0, now - oldest))
        return backlog
    return {}


async def _redis_backlog(layer: Any, channels: list[str], now: float) -> dict[str, tuple[int, float]]:
    by_shard: dict[int, list[str]] = {}
    for channel in channels:
        by_shard.setdefault(layer.consistent_hash(channel), []).append(channel)
    backlog = {}
    for shard, names in by_shard.items():
        async with layer.connection(shard).pipeline(transaction=False) as pipe:
            for channel in names:
                key = layer.prefix + channel
                pipe.zcard(key)
                pipe.zrange(key, 0, 0, withscores=True)
            replies = await pipe.execute()
        for index, channel in enumerate(names):
            depth, first = replies[2 * index], replies[2 * index + 1]
            age = max(0.0, now - float(first[0][1])) if first else 0.0
            backlog[channel] = (int(depth), age)
    return backlog


def publish_backlog(metrics: Metrics, layer: Any, channels: list[str]) -> None:
    """Publish ``gateway_channel_queue_depth{channel}`` and
    ``gateway_channel_oldest_message_age_seconds{channel}`` of ``channels`` at each scrape."""
    channels = list(dict.fromkeys(channels))

    async def consumer_backlog(metrics: Metrics) -> None:
        try:
            backlog = await channel_backlog(layer, channels)
        except BaseException:
            # No number beats a stale one while the layer cannot be read.
            metrics.clear(DEPTH)
            metrics.clear(AGE)
            raise
        for channel, (depth, age) in backlog.items():
            metrics.set(DEPTH, depth, "messages waiting on a consumer channel", channel=channel)
            metrics.set(AGE, age, "seconds the oldest message on a consumer channel has waited (0: none)",
                        channel=channel)

    if channels:
        metrics.on_scrape(consumer_backlog)
