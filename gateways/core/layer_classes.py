"""The channel layer classes a daemon or Django process runs on.

:class:`GatewayRedisChannelLayer` is channels_redis's layer with two traps of
redis-py 8 closed:

- its 5 s default socket timeout equals channels_redis's 5 s blocking pop, so
  an idle receive fails with a timeout: the socket timeout here is longer;
- its pool raises once ``max_connections`` are in use: the pool here blocks
  and waits for a free connection instead;

and connections broken by a Redis restart are retried once on a new one.
:class:`MemoryChannelLayer` is the in-memory layer for ``memory://``.
:mod:`gateways.core.batched` builds on the Redis one; :mod:`gateways.core.layer`
picks among them from the ``layer:`` section.
"""

from __future__ import annotations

import uuid
from typing import Any

from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

#: Longer than channels_redis's 5 s BZPOPMIN, so an idle receive never times out.
SOCKET_TIMEOUT = 30.0
#: How long a layer operation waits for a pooled connection before failing.
POOL_WAIT_TIMEOUT = 30.0


class GatewayRedisChannelLayer(RedisChannelLayer):
    """channels_redis's layer with a blocking, bounded pool and safe timeouts.

    Args:
        max_connections: connections per Redis host and event loop; more
            concurrent operations wait for one to be free.
        **kwargs: everything :class:`RedisChannelLayer` takes.
    """

    def __init__(self, *args: Any, max_connections: int = 64, **kwargs: Any) -> None:
        self.max_connections = max_connections
        super().__init__(*args, **kwargs)

    def create_pool(self, index: int) -> aioredis.ConnectionPool:
        host = dict(self.hosts[index])
        options = {
            "max_connections": self.max_connections,
            "timeout": POOL_WAIT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": 5.0,
            "socket_keepalive": True,
            "health_check_interval": 15,
            # A pooled connection broken by a Redis restart fails its next command;
            # one quick retry on a fresh connection hides that. Timeouts are not
            # retried: the command may have run, and a send would be duplicated.
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2, supported_errors=(RedisConnectionError,)),
        }
        if "address" in host:
            options.update({k: v for k, v in host.items() if k != "address"})
            return aioredis.BlockingConnectionPool.from_url(host["address"], **options)
        if "master_name" in host:
            sentinels = host.pop("sentinels")
            master = host.pop("master_name")
            options.pop("timeout")
            options.update(host)
            sentinel = aioredis.sentinel.Sentinel(sentinels, socket_timeout=5.0)
            return aioredis.sentinel.SentinelConnectionPool(master, sentinel, **options)
        return aioredis.BlockingConnectionPool(**{**options, **host})

    @property
    def process_channel(self) -> str:
        """The non-local name every ``new_channel()`` of this process shares."""
        return f"specific.{self.client_prefix}!"


#: Where the in-memory layer keeps a reply channel's full name in its message.
_TARGET = "__gateway_channel__"


class MemoryChannelLayer(InMemoryChannelLayer):
    """The in-memory layer for ``memory://``, with the process channel that
    a daemon's reply loop receives on, like Redis's."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client_prefix = uuid.uuid4().hex

    @property
    def process_channel(self) -> str:
        return f"specific.{self.client_prefix}!"

    async def new_channel(self, prefix: str = "specific") -> str:
        return f"{self.process_channel}{uuid.uuid4().hex}"

    async def send(self, channel: str, message: dict) -> None:
        if channel.startswith(self.process_channel) and channel != self.process_channel:
            message = {**message, _TARGET: channel}
            channel = self.process_channel
        await super().send(channel, message)

    async def receive_single(self, channel: str) -> tuple[str, dict]:
        """Receive from ``channel``; return the full channel name and message."""
        message = dict(await super().receive(channel))
        return message.pop(_TARGET, channel), message
