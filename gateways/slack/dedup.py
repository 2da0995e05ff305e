"""Which event ids consumers already got, shared by every instance through Redis.

Slack retries an event it did not see acked (``retry_attempt`` 1, 2, 3), and
with several instances the retry may reach another one. An id is marked
``done`` only after the layer accepted its message; while one instance is
handing it off the id is ``pending`` (a short-lived claim), so a retry that
arrives meanwhile elsewhere is neither handed off twice nor acked: Slack
retries it later and then finds it done.
"""

from __future__ import annotations

import asyncio
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


#: Marks ids done, then claims ids, in one round trip. KEYS: the ids to mark
#: done, then the ids to claim; ARGV: how many to mark done, the done TTL, the
#: pending TTL. Returns, per claimed id, 0 (new), 1 (done) or 2 (busy). Atomic,
#: so a claim that finds the id taken also sees what took it.
_SCRIPT = """
local ndone = tonumber(ARGV[1])
for i = 1, ndone do
    redis.call('SET', KEYS[i], 'done', 'EX', ARGV[2])
end
local result = {}
for i = ndone + 1, #KEYS do
    if redis.call('SET', KEYS[i], 'pending', 'NX', 'EX', ARGV[3]) then
        result[#result + 1] = 0
    elseif redis.call('GET', KEYS[i]) == 'done' then
        result[#result + 1] = 1
    else
        result[#result + 1] = 2
    end
end
return result
"""

_CLAIMS: tuple[Claim, ...] = ("new", "done", "busy")


class RedisDedup(Dedup):
    """Event ids in Redis keys ``<prefix>:slack:event:<id>`` with a TTL.

    Claims and ``done`` marks made while a round trip is in flight are queued
    and sent together as one Lua script (marks first, then claims, each claim
    atomic), so a burst of deliveries costs one round trip per batch instead
    of one or two per event.

    Args:
        url: the Redis URL.
        max_connections: connections at most; more concurrent checks wait.
        prefix: the key prefix (the layer's, so tests and stacks stay apart).
        ttl: seconds a delivered id is remembered.
        batch: ids per round trip at most.
    """

    def __init__(self, url: str, prefix: str, ttl: int, max_connections: int = 32, batch: int = 500) -> None:
        # redis-py's default pool raises past its size under a burst; this one waits.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=10, socket_timeout=5, socket_connect_timeout=5)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.prefix = prefix
        self.ttl = ttl
        self.batch = batch
        self.log = logging.getLogger("gateway.slack.dedup")
        self._script = self.redis.register_script(_SCRIPT)
        self._claims: list[tuple[str, asyncio.Future]] = []
        self._dones: list[tuple[str, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    def _key(self, event_id: str) -> str:
        return f"{self.prefix}:slack:event:{event_id}"

    def _queue(self, queue: list[tuple[str, asyncio.Future]], event_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        queue.append((event_id, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return future

    async def claim(self, event_id: str) -> Claim:
        return await self._queue(self._claims, event_id)

    async def done(self, event_id: str) -> None:
        await self._queue(self._dones, event_id)

    async def _flush(self) -> None:
        """Send queued marks and claims, a batch per round trip, until none are left."""
        dones: list[tuple[str, asyncio.Future]] = []
        claims: list[tuple[str, asyncio.Future]] = []
        try:
            while self._dones or self._claims:
                dones, self._dones = self._dones[:self.batch], self._dones[self.batch:]
                room = self.batch - len(dones)
                claims, self._claims = self._claims[:room], self._claims[room:]
                keys = [self._key(event_id) for event_id, _ in dones + claims]
                try:
                    states = await self._script(keys=keys, args=[len(dones), self.ttl, PENDING_TTL])
                except (RedisError, OSError) as exc:
                    if dones:
                        self.log.warning("could not record %s as delivered: %s",
                                         ", ".join(event_id for event_id, _ in dones), exc)
                    if claims:
                        # Without the store a retry may be delivered twice; losing it would be worse.
                        self.log.warning("dedup store unavailable (%s); handing %s off unchecked", exc,
                                         ", ".join(event_id for event_id, _ in claims))
                    states = [0] * len(claims)
                except Exception as exc:  # not the store's doing: the callers see it
                    for _, future in dones + claims:
                        if not future.done():
                            future.set_exception(exc)
                    dones, claims = [], []
                    continue
                for _, future in dones:
                    if not future.done():
                        future.set_result(None)
                for (_, future), state in zip(claims, states):
                    if not future.done():
                        future.set_result(_CLAIMS[int(state)])
                dones, claims = [], []
        finally:
            self._flusher = None
            # Only when cancelled: nobody will send these.
            for _, future in dones + claims + self._dones + self._claims:
                future.cancel()
            self._dones, self._claims = [], []

    async def release(self, event_id: str) -> None:
        key = self._key(event_id)
        try:
            if await self.redis.get(key) == b"pending":
                await self.redis.delete(key)
        except (RedisError, OSError) as exc:
            self.log.warning("could not release %s: %s", event_id, exc)

    async def close(self) -> None:
        if self._flusher is not None:
            # Marks still queued are sent before the connections go.
            await asyncio.wait({self._flusher}, timeout=5)
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
