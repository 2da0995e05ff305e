"""The dead-letter store: messages that failed for good, for an operator to see and replay.

One store for every protocol and both directions:

- ``inbound``: a message a consumer gave up on (``gateway worker`` after its
  last retry, or a permanent failure);
- ``outbound``: a consumer's message a gateway could not carry out for good
  (a relay's 5xx, a Slack API error after retries, an MQTT publish that
  cannot be made).

Entries live in the layer's Redis under ``<layer.prefix>:deadletters:``, in
keys without an expiry (a layer channel's messages expire after
``layer.expiry``), so they survive a restart of every process and, with
Redis persistence, of Redis. The store is bounded by ``dead_letters.retention``
and ``dead_letters.max_entries``.

Keys, all under ``<prefix>:deadletters:``:

- ``entries``: a hash, entry id -> the entry, serialized as the layer
  serializes messages (msgpack, encrypted with
  ``layer.symmetric_encryption_keys`` when set; messages may hold bytes);
- ``index``: a sorted set of every entry id by the time it was stored;
- ``channel:<channel>``: the same, per channel;
- ``channels``: a set of the channels that have entries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from channels_redis.serializers import registry as serializers

if TYPE_CHECKING:
    from gateways.core.config import Config

log = logging.getLogger("gateway.dead_letters")

#: What re-sends a message on its channel: ``await send(channel, message)``.
Send = Callable[[str, dict], Awaitable[Any]]

#: Seconds between WARNING lines about dropped entries (the counts add up meanwhile).
DROP_WARNING_INTERVAL = 10.0

#: Directions of an entry.
INBOUND = "inbound"
OUTBOUND = "outbound"


@dataclass
class DeadLetter:
    """One message that failed for good.

    Args:
        id: the entry's id in the store (not the message's).
        protocol: the protocol whose message it is (``email``, ``mqtt``...).
        channel: the channel the message was received on (inbound) or
            sent on by the consumer (outbound); :meth:`DeadLetterStore.retry`
            re-sends it there.
        message_id: the message's own ``id`` key, when it has one.
        message: the message as it was on the layer.
        error: the exception type and text, then the traceback if any.
        attempts: how many times it was tried.
        first_failure: unix time of the first failed attempt.
        last_failure: unix time of the last failed attempt.
        direction: ``inbound`` (a consumer gave up) or ``outbound`` (a
            protocol action failed for good).
    """

    id: str
    protocol: str
    channel: str
    message_id: str | None
    message: dict
    error: str
    attempts: int
    first_failure: float
    last_failure: float
    direction: str = INBOUND

    @property
    def error_line(self) -> str:
        """The first line of :attr:`error`: the exception type and text."""
        return self.error.strip().splitlines()[0] if self.error.strip() else ""


def describe_error(exc: BaseException, with_traceback: bool = True) -> str:
    """An entry's ``error`` for ``exc``: ``Type: text``, then its traceback if it has one."""
    head = f"{type(exc).__name__}: {exc}"
    if with_traceback and exc.__traceback__ is not None:
        return head + "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return head


def message_id_of(message: Any) -> str | None:
    """A message's own ``id`` (the correlation key the specs define), when it has one."""
    value = message.get("id") if isinstance(message, dict) else None
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class DeadLetterStore:
    """The dead letters of one stack, in its layer's Redis.

    Build it with :meth:`from_config`. Nothing connects until the first
    operation; every operation raises the Redis client's error when Redis
    is unreachable (callers that must keep going catch it, see
    :meth:`gateways.core.runtime.Runtime.dead_letter`).

    Args:
        redis: a ``redis.asyncio.Redis`` client (or anything with its methods).
        prefix: the key prefix (the layer's).
        retention: seconds an entry is kept.
        max_entries: entries kept at most; the oldest are dropped first.
        symmetric_encryption_keys: encrypt entries at rest with these keys,
            as the layer encrypts its messages.
    """

    def __init__(self, redis: Any, prefix: str = "asgi", retention: float = 7 * 86400,
                 max_entries: int = 100_000, symmetric_encryption_keys: list[str] | None = None) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:deadletters:"
        self.retention = retention
        self.max_entries = max_entries
        self._dropped_expired = self._dropped_excess = 0
        self._warned_at = float("-inf")
        # No expiry check on decryption: an entry is read long after it was written.
        self._serializer = serializers.get_serializer(
            "msgpack", symmetric_encryption_keys=symmetric_encryption_keys or None,
            random_prefix_length=0, expiry=None)

    @classmethod
    def from_config(cls, config: Config, url: str | None = None) -> DeadLetterStore:
        """The store of the stack ``config`` describes, in its layer's Redis.

        Args:
            config: the whole configuration (``layer:`` and ``dead_letters:``).
            url: the layer URL when it is not ``layer.url`` (``--layer``, or the
                layer ``gateway up`` embeds); by default ``GATEWAY_LAYER_URL``,
                then ``layer.url``.

        Raises:
            ValueError: no Redis URL is known (``memory://`` or unset).
        """
        from gateways.core.config import LayerConfig
        from gateways.core.layer import layer_kwargs
        from gateways.core.layer_classes import GatewayRedisChannelLayer

        url = url or os.environ.get("GATEWAY_LAYER_URL") or config.layer.url
        if not url or url.startswith("memory:"):
            raise ValueError("the dead letters live in the layer's Redis: layer.url names none "
                             f"({url or 'unset'})")
        layer_config = LayerConfig(**{**config.layer.__dict__, "url": url})
        kwargs = layer_kwargs(layer_config)
        # The layer's own pool construction (timeouts, retry, Sentinel), with a
        # few connections: the store is used now and then, not per message.
        kwargs["max_connections"] = 4
        pool = GatewayRedisChannelLayer(**kwargs).create_pool(0)
        from redis import asyncio as aioredis

        settings = config.dead_letters
        return cls(aioredis.Redis(connection_pool=pool), prefix=config.layer.prefix,
                   retention=settings.retention, max_entries=settings.max_entries,
                   symmetric_encryption_keys=config.layer.symmetric_encryption_keys)

    # -- keys ----------------------------------------------------------------

    @property
    def _entries(self) -> str:
        return self.prefix + "entries"

    @property
    def _index(self) -> str:
        return self.prefix + "index"

    @property
    def _channels(self) -> str:
        return self.prefix + "channels"

    def _channel_key(self, channel: str) -> str:
        return self.prefix + "channel:" + channel

    # -- serialization -------------------------------------------------------

    def _dump(self, entry: DeadLetter) -> bytes:
        return self._serializer.serialize(asdict(entry))

    def _load(self, blob: bytes) -> DeadLetter | None:
        try:
            return DeadLetter(**self._serializer.deserialize(blob))
        except Exception:  # noqa: BLE001 - an entry written with a key since removed, or damaged
            log.exception("a dead letter cannot be read (encrypted with another key?); skipped")
            return None

    # -- operations ------------------------------------------------------------

    async def add(self, *, protocol: str, channel: str, message: dict, error: str, attempts: int,
                  first_failure: float, last_failure: float, direction: str = INBOUND) -> str:
        """Store a message that failed for good; return the entry's id.

        The oldest entries beyond ``max_entries`` and those older than
        ``retention`` are dropped (a WARNING says how many).
        """
        if direction not in (INBOUND, OUTBOUND):
            raise ValueError(f"direction must be {INBOUND!r} or {OUTBOUND!r}, not {direction!r}")
        entry = DeadLetter(id=_new_id(), protocol=protocol, channel=channel, message_id=message_id_of(message),
                           message=message, error=error, attempts=attempts, first_failure=first_failure,
                           last_failure=last_failure, direction=direction)
        stored = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._entries, entry.id, self._dump(entry))
            pipe.zadd(self._index, {entry.id: stored})
            pipe.zadd(self._channel_key(channel), {entry.id: stored})
            pipe.sadd(self._channels, channel)
            await pipe.execute()
        await self.prune()
        return entry.id

    async def list(self, channel: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        """The entries, oldest first; only ``channel``'s when given; at most ``limit``."""
        await self.prune()
        key = self._channel_key(channel) if channel is not None else self._index
        ids = await self.redis.zrange(key, 0, -1 if limit is None else limit - 1)
        return await self._entries_of(ids)

    async def get(self, entry_id: str) -> DeadLetter | None:
        """The entry ``entry_id``; None when there is none."""
        blob = await self.redis.hget(self._entries, entry_id)
        return None if blob is None else self._load(blob)

    async def drop(self, entry_id: str) -> bool:
        """Remove the entry ``entry_id``; False when there was none."""
        entry = await self.get(entry_id)
        if entry is None:
            # An unreadable entry is dropped all the same, from every channel index.
            if not await self.redis.hexists(self._entries, entry_id):
                return False
            return await self._remove([(entry_id, c) for c in await self._channel_names()]) > 0
        return await self._remove([(entry.id, entry.channel)]) > 0

    async def retry(self, entry_id: str, send: Send) -> bool:
        """Re-send the entry's message on its channel with ``send``; remove the
        entry once the send succeeded. False when there is no such entry; an
        error of ``send`` is raised and the entry kept."""
        entry = await self.get(entry_id)
        if entry is None:
            return False
        await send(entry.channel, entry.message)
        await self._remove([(entry.id, entry.channel)])
        return True

    async def summary(self) -> dict[str, tuple[int, float]]:
        """Channel -> (how many entries, the oldest entry's age in seconds)."""
        await self.prune()
        channels = sorted(await self._channel_names())
        if not channels:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.zcard(self._channel_key(channel))
                pipe.zrange(self._channel_key(channel), 0, 0, withscores=True)
            replies = await pipe.execute()
        now = time.time()
        result: dict[str, tuple[int, float]] = {}
        empty = []
        for channel, count, oldest in zip(channels, replies[::2], replies[1::2]):
            if not count:
                empty.append(channel)
                continue
            result[channel] = (int(count), max(0.0, now - float(oldest[0][1])))
        if empty:
            await self._forget_empty(empty)
        return result

    async def count(self) -> int:
        """How many entries there are."""
        return int(await self.redis.zcard(self._index))

    async def prune(self) -> int:
        """Drop entries older than ``retention`` and the oldest beyond
        ``max_entries``; return how many were dropped."""
        cutoff = time.time() - self.retention
        expired = await self.redis.zrangebyscore(self._index, "-inf", cutoff)
        excess_ids: list[Any] = []
        total = await self.redis.zcard(self._index) - len(expired)
        if total > self.max_entries:
            excess_ids = await self.redis.zrange(self._index, len(expired), len(expired) + total - self.max_entries - 1)
        doomed = [*expired, *excess_ids]
        if not doomed:
            return 0
        entries = await self._entries_of(doomed)
        by_id = {e.id: e.channel for e in entries}
        channels = None
        pairs = []
        for raw in doomed:
            entry_id = raw.decode() if isinstance(raw, bytes) else raw
            if entry_id in by_id:
                pairs.append((entry_id, by_id[entry_id]))
            else:  # unreadable: its channel is unknown, so remove it from all
                if channels is None:
                    channels = await self._channel_names()
                pairs.extend((entry_id, c) for c in channels or [""])
        removed = await self._remove(pairs)
        self._dropped_expired += len(expired)
        self._dropped_excess += len(excess_ids)
        self._warn_dropped()
        return removed

    def _warn_dropped(self) -> None:
        """Log what was dropped, at most once per :data:`DROP_WARNING_INTERVAL`:
        a flood of failures past ``max_entries`` drops one entry per new one."""
        now = time.monotonic()
        if now - self._warned_at < DROP_WARNING_INTERVAL:
            return
        if self._dropped_expired:
            log.warning("dropped %d dead letters older than the retention of %gs (dead_letters.retention)",
                        self._dropped_expired, self.retention)
        if self._dropped_excess:
            log.warning("dropped the %d oldest dead letters: the store holds at most %d (dead_letters.max_entries)",
                        self._dropped_excess, self.max_entries)
        self._warned_at = now
        self._dropped_expired = self._dropped_excess = 0

    async def close(self) -> None:
        """Close the Redis connections."""
        try:
            await asyncio.wait_for(self.redis.aclose(), 5)
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass

    # -- internals -----------------------------------------------------------

    async def _channel_names(self) -> list[str]:
        return [c.decode() if isinstance(c, bytes) else c for c in await self.redis.smembers(self._channels)]

    async def _entries_of(self, ids: list[Any]) -> list[DeadLetter]:
        if not ids:
            return []
        blobs = await self.redis.hmget(self._entries, ids)
        entries = []
        for blob in blobs:
            if blob is None:
                continue  # removed meanwhile
            entry = self._load(blob)
            if entry is not None:
                entries.append(entry)
        return entries

    async def _remove(self, pairs: list[tuple[str, str]]) -> int:
        """Remove entries given as (id, channel); how many entries were removed."""
        if not pairs:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            ids = list(dict.fromkeys(entry_id for entry_id, _ in pairs))
            pipe.hdel(self._entries, *ids)
            pipe.zrem(self._index, *ids)
            for entry_id, channel in pairs:
                pipe.zrem(self._channel_key(channel), entry_id)
            replies = await pipe.execute()
        channels = sorted({channel for _, channel in pairs})
        await self._forget_empty(channels)
        return int(replies[0])

    async def _forget_empty(self, channels: list[str]) -> None:
        """Take channels whose index emptied out of the ``channels`` set."""
        for channel in channels:
            # In one step: an entry added between a check and the removal keeps its channel.
            await self.redis.eval(_FORGET_IF_EMPTY, 2, self._channel_key(channel), self._channels, channel)


class DeadLetterGauges:
    """``/metrics`` gauges of the store: per channel, how many dead letters and
    the oldest one's age, read from the store when scraped.

    Args:
        store: the store to read.
        metrics: the registry the gauges are set in (``gateway_dead_letters``,
            ``gateway_dead_letter_oldest_age_seconds``, label ``channel``).
        max_age: seconds a reading is reused, so frequent scrapes (several
            Prometheus servers, say) cost one read.
        timeout: seconds a read may take; past it (Redis down) the last values stay.
    """

    def __init__(self, store: DeadLetterStore, metrics: Any, max_age: float = 5.0, timeout: float = 2.0) -> None:
        self.store = store
        self.metrics = metrics
        self.max_age = max_age
        self.timeout = timeout
        self._read_at = float("-inf")
        self._channels: set[str] = set()

    async def refresh(self, _metrics: Any = None) -> None:
        """Set the gauges from the store, unless the last reading is recent."""
        now = time.monotonic()
        if now - self._read_at < self.max_age:
            return
        self._read_at = now
        try:
            summary = await asyncio.wait_for(self.store.summary(), self.timeout)
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even with Redis down
            log.debug("dead-letter gauges not refreshed: %s: %s", type(exc).__name__, exc)
            return
        # A channel whose entries were all retried or dropped reads 0, not its last count.
        for channel in self._channels - set(summary):
            summary[channel] = (0, 0.0)
        for channel, (count, age) in summary.items():
            self.metrics.set("dead_letters", count, "dead letters kept, per channel", channel=channel)
            self.metrics.set("dead_letter_oldest_age_seconds", age, "age of the oldest dead letter, per channel",
                             channel=channel)
        self._channels = set(summary)


#: Remove ARGV[1] from the set KEYS[2] when the key KEYS[1] does not exist.
_FORGET_IF_EMPTY = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""


def _new_id() -> str:
    """A short entry id, in time order to the second (readable in a table)."""
    return f"{int(time.time()):x}-{uuid.uuid4().hex[:8]}"
