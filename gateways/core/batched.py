"""A channels_redis-compatible layer that moves many messages per round trip.

:class:`BatchedRedisChannelLayer` reads and writes exactly the Redis data
channels_redis 4.3's ``RedisChannelLayer`` does — the same keys (a sorted set
``<prefix><channel>`` per channel, every process-specific channel of a
process sharing ``<prefix>specific.<client>!``), the same serializer (msgpack
with a random prefix, optional encryption), the same capacity check
(``ChannelFull`` once the key holds ``capacity`` messages), the same expiry
(messages older than ``expiry`` dropped on the next send, the key expiring
after ``expiry``) and the same groups — so a stock layer in a Django web
process and this one interoperate in both directions. What differs is the
number of round trips:

- **send**: sends made while a round trip is in flight are queued and written
  together by one Lua script (expiry trim, capacity check, ``ZADD``,
  ``EXPIRE`` per message); each sender still gets its own ``ChannelFull``.
  Scores are strictly increasing per process, so messages sent in one batch
  keep their order (equal scores would sort by the random member bytes).
- **receive**: one fetcher per channel and event loop takes up to
  ``receive_batch`` messages per round trip with ``BZMPOP ... MIN COUNT n``
  (Redis 7+; before that ``BZPOPMIN`` pipelined with ``ZPOPMIN count``),
  blocking while the channel is empty, and buffers them. It fetches only
  while someone waits on an empty buffer, so a channel nobody reads is not
  drained into memory.
- **connections**: the flusher and each fetcher keep one pooled connection
  for their round trips (taking one from redis-py's pool per command costs
  more than the command); a broken one is dropped and the round trip tried
  once on a fresh connection.
- **reply channels**: ``receive_single(process_channel)`` returns
  ``(full channel name, message)`` for every reply channel of the process off
  the one shared key: a gateway multiplexes all its connections on one loop.

Unlike stock channels_redis, a receive does not keep a ``$inflight`` backup
copy in Redis: fetched messages live in the process buffer until read (the
layer is at-most-once either way; :meth:`stop_fetching` and
:meth:`take_buffered` let a worker drain what it fetched before it exits).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from channels.exceptions import ChannelFull
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from gateways.core.compat_channels_redis import copies_per_key, group_key
from gateways.core.compat_redis import local_address
from gateways.core.layer_classes import SOCKET_TIMEOUT, GatewayRedisChannelLayer

#: Writes a batch of messages; ARGV = expiry, cutoff, then (key index, capacity,
#: score, member) per message. Returns 1 (stored) or 0 (channel full) per message.
_SEND_SCRIPT = """
local expiry = tonumber(ARGV[1])
local cutoff = tonumber(ARGV[2])
local counts = {}
local added = {}
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
    counts[i] = redis.call('ZCARD', KEYS[i])
end
local result = {}
local n = 0
for j = 3, #ARGV, 4 do
    local k = tonumber(ARGV[j])
    n = n + 1
    if counts[k] < tonumber(ARGV[j + 1]) then
        redis.call('ZADD', KEYS[k], ARGV[j + 2], ARGV[j + 3])
        counts[k] = counts[k] + 1
        added[k] = true
        result[n] = 1
    else
        result[n] = 0
    end
end
for k, _ in pairs(added) do
    redis.call('EXPIRE', KEYS[k], expiry)
end
return result
"""
logger = logging.getLogger("gateway.layer")

_SEND_SHA = hashlib.sha1(_SEND_SCRIPT.encode()).hexdigest()


@dataclass
class _Outgoing:
    key: str
    capacity: int
    score: float
    member: bytes
    future: asyncio.Future
    #: On the last item of a send_many: how many items (this one included) must share its round trip.
    unit: int = 1


@dataclass
class _LoopState:
    """What one event loop owns: its send queue and flusher, its fetchers and waiters."""

    pending: list[_Outgoing] = field(default_factory=list)
    flusher: asyncio.Task | None = None
    fetchers: dict[str, asyncio.Task] = field(default_factory=dict)
    waiters: dict[str, list[asyncio.Future]] = field(default_factory=lambda: collections.defaultdict(list))
    #: Pooled connections kept by the flusher ("send") and each fetcher ("fetch:<channel>"):
    #: taking one from the pool per round trip costs more than the round trip.
    held: dict[str, Any] = field(default_factory=dict)


class BatchedRedisChannelLayer(GatewayRedisChannelLayer):
    """channels_redis's layer, same data, many messages per round trip.

    Args:
        receive_batch: most messages one receive round trip takes off a channel.
        send_batch: most messages one send round trip writes.
        block_timeout: seconds a fetch blocks on an empty channel before asking
            again (bounds how long :meth:`stop_fetching` waits).
        **kwargs: everything :class:`GatewayRedisChannelLayer` takes.
    """

    def __init__(self, *args: Any, receive_batch: int = 100, send_batch: int = 500,
                 block_timeout: float = 2.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receive_batch = max(1, receive_batch)
        self.send_batch = max(1, send_batch)
        # A blocked pop must answer well within the socket timeout, or the read fails.
        self.block_timeout = min(block_timeout, SOCKET_TIMEOUT / 2)
        # Fetched, not yet received messages by channel, shared by all loops so that
        # sequential async_to_sync receives (a new loop each) find what an earlier one fetched.
        # Raw (member, score) pairs, deserialized when received, so that what nobody
        # received can go back to Redis unchanged (see close_pools).
        self._buffers: dict[str, collections.deque[tuple[bytes, Any]]] = collections.defaultdict(collections.deque)
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        self._last_score = 0.0
        self._bzmpop: bool | None = None  # whether the server has BZMPOP (Redis 7+); None: not known yet

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState()
        return state

    # -- send ----------------------------------------------------------------

    def _next_score(self) -> float:
        # Strictly increasing, so a batch keeps its order in the sorted set; 1 µs
        # steps keep it within a hair of the clock that expiry compares with.
        now = time.time()
        score = now if now > self._last_score else self._last_score + 1e-6
        self._last_score = score
        return score

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` on ``channel``; raise ChannelFull when it is at capacity."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        non_local = channel
        if "!" in channel:
            message = {**message, "__asgi_channel__": channel}
            non_local = self.non_local_name(channel)
        stored = await self._enqueue([(self.prefix + non_local, self.get_capacity(channel), self.serialize(message))])
        if not stored[0]:
            raise ChannelFull()

    async def send_many(self, channel: str, messages: list[dict[str, Any]]) -> int:
        """Send ``messages`` on ``channel`` in order, in one round trip; how many were stored.

        They are written by one script run, never split across round trips
        (so at most :attr:`send_batch` of them; more raise ValueError), with
        increasing scores: they land in this order, and in order after
        anything sent earlier on this event loop. The script checks capacity
        per message and one channel's count only grows within a run, so the
        ones stored are always a prefix: ``n`` means the first ``n`` are in
        the channel and every later one was refused (ChannelFull for it).
        Retrying the refused ones in order, once this call returned, keeps
        the order. A connection error raises for all of them, as for send.
        """
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        if len(messages) > self.send_batch:
            raise ValueError(f"send_many takes at most send_batch ({self.send_batch}) messages")
        key, capacity, serialize = self.prefix + channel, self.get_capacity(channel), self.serialize
        if "!" in channel:
            key = self.prefix + self.non_local_name(channel)
        items = []
        for message in messages:
            assert isinstance(message, dict), "message is not a dict"
            assert "__asgi_channel__" not in message
            if "!" in channel:
                message = {**message, "__asgi_channel__": channel}
            items.append((key, capacity, serialize(message)))
        stored = await self._enqueue(items, whole=True)
        count = 0
        for ok in stored:
            if not ok:
                break
            count += 1
        # A stored message after a refused one would break the order its caller relies on.
        assert not any(stored[count:]), "send_many: a message stored after a refused one"
        return count

    async def _enqueue(self, items: list[tuple[str, int, bytes]], whole: bool = False) -> list[bool]:
        """Queue (key, capacity, member) writes for the flusher; whether each was stored.

        ``whole``: the items go in one round trip (the flusher never splits them)."""
        loop = asyncio.get_running_loop()
        state = self._state()
        futures = []
        for key, capacity, member in items:
            future: asyncio.Future = loop.create_future()
            state.pending.append(_Outgoing(key, capacity, self._next_score(), member, future))
            futures.append(future)
        if whole and len(items) > 1:
            state.pending[-1].unit = len(items)
        if state.flusher is None:
            state.flusher = asyncio.ensure_future(self._flush(state))
        return [bool(await future) for future in futures]

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every member of ``group``, as channels_redis does (one
        copy per Redis key, naming its member channels; members over capacity are
        skipped and logged), in two round trips shared with other sends."""
        assert self.require_valid_group_name(group), "Group name not valid"
        key = group_key(self, group)
        pipe = self.connection(0).pipeline(transaction=False)
        pipe.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _trimmed, members = await pipe.execute()
        channel_names = [m.decode("utf8") for m in members]
        if not channel_names:
            return
        messages, capacities = copies_per_key(self, channel_names, message)
        keys = list(messages)
        stored = await self._enqueue([(k.decode() if isinstance(k, bytes) else k, capacities[k], messages[k])
                                      for k in keys])
        over = stored.count(False)
        if over:
            logger.info("%s of %s channels over capacity in group %s", over, len(channel_names), group)

    async def _flush(self, state: _LoopState) -> None:
        """Write queued sends, a batch per round trip, until none are left."""
        try:
            while state.pending:
                size = min(self.send_batch, len(state.pending))
                if size < len(state.pending):
                    # Never split a send_many: end the batch before one that does not fit.
                    end = size
                    for index in range(size, min(len(state.pending), size + self.send_batch)):
                        if state.pending[index].unit > 1 and index - state.pending[index].unit + 1 < size:
                            end = index - state.pending[index].unit + 1
                            break
                    size = end
                batch = state.pending[:size]
                del state.pending[:size]
                try:
                    stored = await self._write(state, batch)
                except BaseException as exc:
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for item, ok in zip(batch, stored):
                    if not item.future.done():
                        item.future.set_result(bool(ok))
        finally:
            state.flusher = None
            for item in state.pending:  # only when cancelled: nobody will write these
                if not item.future.done():
                    item.future.set_exception(ConnectionError("channel layer closed before the send"))
            state.pending.clear()

    async def _write(self, state: _LoopState, batch: list[_Outgoing]) -> list[int]:
        keys: dict[str, int] = {}
        args: list[Any] = [int(self.expiry), int(time.time()) - int(self.expiry)]
        for item in batch:
            index = keys.setdefault(item.key, len(keys) + 1)
            args += [index, item.capacity, repr(item.score), item.member]
        try:
            return await self._roundtrip(state, "send", [("EVALSHA", _SEND_SHA, len(keys), *keys, *args)])
        except NoScriptError:  # first use on this server, or it restarted
            return await self._roundtrip(state, "send", [("EVAL", _SEND_SCRIPT, len(keys), *keys, *args)])

    async def _roundtrip(self, state: _LoopState, role: str, commands: list[tuple]) -> Any:
        """Send ``commands`` pipelined on ``role``'s connection; the reply (the list
        of replies for several commands).

        A connection broken (say, by a Redis restart) is dropped and the round
        trip tried once more on a fresh one, as the pool's retry would."""
        for attempt in (1, 2):
            connection = state.held.get(role)
            if connection is None:
                connection = state.held[role] = await self.connection(0).connection_pool.get_connection()
            try:
                await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
                replies = []
                for _ in commands:
                    replies.append(await connection.read_response())
                return replies[-1] if len(replies) == 1 else replies
            except ResponseError:
                if len(commands) > 1:  # later replies are still unread on it
                    await self._drop(state, role)
                raise
            except BaseException as exc:
                await self._drop(state, role)
                if attempt == 1 and isinstance(exc, (RedisConnectionError, ConnectionError)) \
                        and not isinstance(exc, TimeoutError):
                    continue
                raise
        raise AssertionError("unreachable")

    async def _drop(self, state: _LoopState, role: str) -> None:
        connection = state.held.pop(role, None)
        if connection is None:
            return
        try:
            await connection.disconnect()
        finally:
            await self.connection(0).connection_pool.release(connection)

    # -- receive -------------------------------------------------------------

    async def receive_single(self, channel: str) -> tuple[Any, dict[str, Any]]:
        """The next message on ``channel`` (a named channel or a process channel
        ``specific.<client>!``) as ``(target, message)``; ``target`` is the full
        reply channel name, a list of them for a group message, or ``channel``."""
        assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
        if "!" in channel:
            assert channel.endswith("!")
        buffer = self._buffers[channel]
        state = self._state()
        while not buffer:
            fetcher = state.fetchers.get(channel)
            if fetcher is None:
                state.fetchers[channel] = asyncio.ensure_future(self._fetch(state, channel))
            future = asyncio.get_running_loop().create_future()
            state.waiters[channel].append(future)
            try:
                await future
            finally:
                waiters = state.waiters[channel]
                if future in waiters:
                    waiters.remove(future)
        return self._decode(channel, buffer.popleft()[0])

    def _decode(self, channel: str, member: bytes) -> tuple[Any, dict[str, Any]]:
        message = self.deserialize(member)
        return message.pop("__asgi_channel__", channel), message

    async def _fetch(self, state: _LoopState, channel: str) -> None:
        """Fetch batches for ``channel`` while someone waits on its empty buffer.

        Runs as its own task so a cancelled receive never interrupts a round
        trip that has already taken messages off Redis.
        """
        buffer = self._buffers[channel]
        try:
            while state.waiters[channel] and not buffer:
                try:
                    buffer.extend(await self._pop(state, channel))
                except Exception as exc:
                    for future in state.waiters[channel]:
                        if not future.done():
                            future.set_exception(exc)
                    return
                self._wake(state, channel)
        finally:
            state.fetchers.pop(channel, None)
            self._wake(state, channel)
            # Back to the pool between bursts: a process may fetch from more channels
            # than it has connections.
            connection = state.held.pop(f"fetch:{channel}", None)
            if connection is not None:
                await self.connection(0).connection_pool.release(connection)

    def _wake(self, state: _LoopState, channel: str) -> None:
        # Wake one waiter per buffered message; when the fetcher stops with waiters
        # left, wake one so it starts a new fetcher.
        waiters = state.waiters[channel]
        budget = max(len(self._buffers[channel]), 1)
        for future in waiters:
            if budget == 0:
                break
            if not future.done():
                future.set_result(None)
                budget -= 1

    async def _pop(self, state: _LoopState, channel: str) -> list[tuple[bytes, Any]]:
        """One round trip: block for the first message, take up to a batch of
        (member, score) pairs."""
        key = self.prefix + channel
        role = f"fetch:{channel}"
        if self._bzmpop is not False:
            try:
                reply = await self._roundtrip(
                    state, role, [("BZMPOP", self.block_timeout, 1, key, "MIN", "COUNT", self.receive_batch)])
            except ResponseError as exc:
                if self._bzmpop is not None or "unknown command" not in str(exc).lower():
                    raise
                self._bzmpop = False  # Redis before 7.0
            else:
                self._bzmpop = True
                return [] if reply is None else _pairs(reply[1])
        commands: list[tuple] = [("BZPOPMIN", key, self.block_timeout)]
        if self.receive_batch > 1:
            commands.append(("ZPOPMIN", key, self.receive_batch - 1))
        replies = await self._roundtrip(state, role, commands)
        replies = replies if len(commands) > 1 else [replies]
        pairs = [] if replies[0] is None else [(replies[0][1], replies[0][2])]
        if len(replies) > 1:
            pairs.extend(_pairs(replies[1]))
        return pairs

    # -- draining and closing --------------------------------------------------

    async def stop_fetching(self) -> None:
        """End this loop's fetches (callers stopped receiving first): a fetch
        blocked on an empty channel is released with ``CLIENT UNBLOCK`` (it
        returns as if timed out, taking nothing); what fetches took stays
        buffered for :meth:`take_buffered`."""
        state = self._state()
        fetchers = list(state.fetchers.values())
        if not fetchers:
            return
        try:
            await self._unblock([c for role, c in state.held.items() if role.startswith("fetch:")])
        except Exception:  # an old server, a unix socket, a dead server: the block times out
            pass
        await asyncio.wait(fetchers, timeout=self.block_timeout + 5)

    async def _unblock(self, connections: list[Any]) -> None:
        """``CLIENT UNBLOCK`` the server side of ``connections`` (found by address)."""
        addresses = {local_address(connection) for connection in connections} - {None}
        if not addresses:
            return
        client = self.connection(0)
        for entry in await client.client_list():
            if entry.get("addr") in addresses:
                await client.client_unblock(int(entry["id"]))

    def take_buffered(self, channel: str) -> list[tuple[Any, dict[str, Any]]]:
        """Remove and return what was fetched for ``channel`` but not received,
        as ``(target, message)`` pairs."""
        buffer = self._buffers.pop(channel, None) or ()
        return [self._decode(channel, member) for member, _score in buffer]

    async def close_pools(self) -> None:
        """Finish queued sends, end this loop's fetches, put what was fetched from
        named channels but never received back in Redis, close the connections."""
        state = self._states.get(asyncio.get_running_loop())
        if state is not None:
            if state.flusher is not None:
                await asyncio.wait([state.flusher], timeout=10)
            for waiters in state.waiters.values():  # nobody receives any more
                for future in waiters:
                    if not future.done():
                        future.set_exception(ConnectionError("the channel layer was closed"))
            try:
                await asyncio.wait_for(self.stop_fetching(), self.block_timeout + 1)
            except (asyncio.TimeoutError, OSError, ConnectionError):
                pass
            for task in list(state.fetchers.values()):
                task.cancel()
            await self._requeue(state)
            for role in list(state.held):
                try:
                    await self._drop(state, role)
                except Exception:  # a dead server: nothing to close politely
                    pass
        await super().close_pools()

    async def _requeue(self, state: _LoopState) -> None:
        """Give named channels' unreceived messages back, with their scores, so
        another receiver gets them in order. A process channel's messages are
        for this process alone: they are dropped with it, as with channels_redis."""
        for channel in [c for c, buffer in self._buffers.items() if buffer and "!" not in c]:
            buffer = self._buffers.pop(channel)
            mapping = {member: float(score) for member, score in buffer}
            try:
                await self.connection(0).zadd(self.prefix + channel, mapping)
                await self.connection(0).expire(self.prefix + channel, int(self.expiry))
            except Exception as exc:
                logger.warning("could not return %d fetched message(s) to %s: %s", len(mapping), channel, exc)


def _pairs(reply: Any) -> list[tuple[bytes, Any]]:
    """(member, score) pairs of a ZPOPMIN/BZMPOP reply: [[member, score], ...]
    (RESP3, BZMPOP) or [member, score, member, score, ...] (RESP2 ZPOPMIN)."""
    if not reply:
        return []
    if isinstance(reply[0], (list, tuple)):
        return [(pair[0], pair[1]) for pair in reply]
    return list(zip(reply[0::2], reply[1::2]))
