"""Which event ids consumers already got, shared by every instance through Redis.

Slack retries an event it did not see acked (``retry_attempt`` 1, 2, 3), and
with several instances the retry may reach another one. An id is marked
``done`` only after the layer accepted its message; while one instance is
handing it off the id is ``pending`` (a short-lived claim), so a retry that
arrives meanwhile elsewhere is neither handed off twice nor acked: Slack
retries it later and then finds it done.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from redis import asyncio as aioredis
from redis.exceptions import RedisError

Claim = Literal["new", "done", "busy"]

#: How long a hand-off may hold its claim before another instance may try.
PENDING_TTL = 30


class Dedup:
    """The interface of both stores."""

    async def claim(self, event_id: str) -> Claim:
        """``new`` (this caller hands it off), ``done`` (already delivered) or
        ``busy`` (another hand-off is in flight)."""
        raise NotImplementedError

    async def done(self, event_id: str) -> None:
        """Record that the layer accepted the message of ``event_id``."""
        raise NotImplementedError

    async def release(self, event_id: str) -> None:
        """Give up a claim after a failed hand-off, so a retry can try again."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""


class RedisDedup(Dedup):
    """Event ids in Redis keys ``<prefix>:slack:event:<id>`` with a TTL.

    Args:
        url: the Redis URL.
        max_connections: connections at most; more concurrent checks wait.
        prefix: the key prefix (the layer's, so tests and stacks stay apart).
        ttl: seconds a delivered id is remembered.
    """

    def __init__(self, url: str, prefix: str, ttl: int, max_connections: int = 32) -> None:
        # redis-py's default pool raises past its size under a burst; this one waits.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=10, socket_timeout=5, socket_connect_timeout=5)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.prefix = prefix
        self.ttl = ttl
        self.log = logging.getLogger("gateway.slack.dedup")

    def _key(self, event_id: str) -> str:
        return f"{self.prefix}:slack:event:{event_id}"

    async def claim(self, event_id: str) -> Claim:
        key = self._key(event_id)
        try:
            if await self.redis.set(key, b"pending", nx=True, ex=PENDING_TTL):
                return "new"
            state = await self.redis.get(key)
        except (RedisError, OSError) as exc:
            # Without the store a retry may be delivered twice; losing it would be worse.
            self.log.warning("dedup store unavailable (%s); handing %s off unchecked", exc, event_id)
            return "new"
        if state is None:  # expired between the two commands
            return await self.claim(event_id)
        return "done" if state == b"done" else "busy"

    async def done(self, event_id: str) -> None:
        try:
            await self.redis.set(self._key(event_id), b"done", ex=self.ttl)
        except (RedisError, OSError) as exc:
            self.log.warning("could not record %s as delivered: %s", event_id, exc)

    async def release(self, event_id: str) -> None:
        key = self._key(event_id)
        try:
            if await self.redis.get(key) == b"pending":
                await self.redis.delete(key)
        except (RedisError, OSError) as exc:
            self.log.warning("could not release %s: %s", event_id, exc)

    async def close(self) -> None:
        await self.redis.aclose()


class MemoryDedup(Dedup):
    """Event ids in this process only: for ``memory://`` layers (one process).

    Args:
        ttl: seconds a delivered id is remembered.
    """

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self._ids: dict[str, tuple[str, float]] = {}

    def _state(self, event_id: str) -> str | None:
        entry = self._ids.get(event_id)
        if entry is None or entry[1] < time.monotonic():
            self._ids.pop(event_id, None)
            return None
        return entry[0]

    async def claim(self, event_id: str) -> Claim:
        state = self._state(event_id)
        if state is None:
            if len(self._ids) > 100_000:
                self._prune()
            self._ids[event_id] = ("pending", time.monotonic() + PENDING_TTL)
            return "new"
        return "done" if state == "done" else "busy"

    async def done(self, event_id: str) -> None:
        self._ids[event_id] = ("done", time.monotonic() + self.ttl)

    async def release(self, event_id: str) -> None:
        if self._state(event_id) == "pending":
            del self._ids[event_id]

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, until) in self._ids.items() if until < now]:
            del self._ids[key]
