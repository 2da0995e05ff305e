"""Gateway instances that die leave no ghosts.

A WebSocket gateway killed with SIGKILL (or whose host is lost) cannot tell
its connections' consumers that they closed, nor take them out of their
groups: without help they would stay members until ``group_expiry`` (a day
by default) and presence would list them. So, on a Redis layer, each
instance keeps in Redis:

- a heartbeat, ``<prefix>:ws:instance:<id>``, with a time to live of
  ``websocket.instance_timeout`` seconds, refreshed three times per timeout;
- a record of its connections, ``<prefix>:ws:connections:<id>`` (a hash:
  reply channel -> the route's channel, path, kwargs, state, order), written
  when a handshake arrives (before ``websocket.connect`` goes out), again
  when the connection opens, and deleted when it closes;
- its id in the set ``<prefix>:ws:instances``.

The id is the layer's process prefix (reply channels are
``specific.<id>!...``), new on every start. Every instance, a restarted one
included, looks every third of the timeout for ids whose heartbeat expired,
claims one (``SET NX`` with an expiry, so a reaper that dies in turn is
replaced), sends ``websocket.disconnect`` with code 1006 and ``lost: true``
for each recorded connection (after removing every reply channel of that
instance from every group, so presence is right when the consumer runs), and
deletes its records. A ghost is thus gone within about
4/3 of ``instance_timeout`` after its instance died.

An instance only reaps once it has itself kept its heartbeat for a whole
timeout: an expired heartbeat then means its owner could not refresh it in
all that time, not that Redis was away for everyone (after an outage every
heartbeat has expired at once).

An instance that was only cut off (from Redis, or frozen) for longer than the
timeout finds, when it beats again, the mark ``<prefix>:ws:reaped:<id>`` the
reaper left: its consumers were told its connections were lost, so it calls
``on_reaped`` (the gateway closes them, without a second disconnect, and
their clients reconnect) and starts over with no connections recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable

import msgpack

from gateways.core.runtime import HandoffError
from gateways.websocket.protocol import Connection

#: The close code a reaped connection's ``websocket.disconnect`` carries: the connection was lost.
CLOSE_LOST = 1006
#: Seconds the mark of a reaped instance stays, for the case it was alive after all.
REAPED_MARK_TTL = 86400


class Instances:
    """This instance's heartbeat and connection records, and the reaping of dead instances.

    Args:
        runtime: the core services (its layer must be a Redis layer for anything to happen).
        timeout: ``websocket.instance_timeout``: seconds without a heartbeat after which
            an instance counts as dead.
        on_reaped: called when this instance finds it was taken for dead and reaped.
    """

    def __init__(self, runtime: Any, timeout: float, on_reaped: Callable[[], None] | None = None) -> None:
        self.runtime = runtime
        self.timeout = timeout
        self.on_reaped = on_reaped
        self.log: logging.Logger = runtime.log
        layer = runtime.layer
        # The in-memory layer lives and dies with its only process: nothing to do.
        self.enabled = callable(getattr(layer, "connection", None)) and hasattr(layer, "client_prefix")
        self.id: str = getattr(layer, "client_prefix", "")
        prefix = getattr(layer, "prefix", "")
        self._prefix = prefix
        self._index = f"{prefix}:ws:instances"
        #: The connections recorded, so that a Redis that forgot them is refilled.
        self._records: dict[str, Connection] = {}
        self._written: dict[str, str] = {}  # what Redis holds for each, as far as we know
        self._healthy_since: float | None = None
        self._task: asyncio.Task | None = None

    def _alive_key(self, instance: str) -> str:
        return f"{self._prefix}:ws:instance:{instance}"

    def _connections_key(self, instance: str) -> str:
        return f"{self._prefix}:ws:connections:{instance}"

    def _reaped_key(self, instance: str) -> str:
        return f"{self._prefix}:ws:reaped:{instance}"

    def _redis(self) -> Any:
        return self.runtime.layer.connection(0)

    # -- this instance -------------------------------------------------------------------

    async def opened(self, conn: Connection) -> None:
        """Record ``conn`` (again, with its state once it is open); never raises."""
        if not self.enabled:
            return
        record = _record(conn)
        if self._written.get(conn.reply_channel) == record:
            return  # opened with nothing new since the handshake: spare the round trip
        self._records[conn.reply_channel] = conn
        try:
            await self._redis().hset(self._connections_key(self.id), conn.reply_channel, record)
            self._written[conn.reply_channel] = record
        except Exception as exc:  # noqa: BLE001 - its groups still go if we die; only the disconnect would not
            self.log.warning("recording connection %s failed: %s", conn.reply_channel, exc)

    async def closed(self, conn: Connection) -> None:
        """Forget ``conn``; never raises."""
        self._written.pop(conn.reply_channel, None)
        if not self.enabled or self._records.pop(conn.reply_channel, None) is None:
            return
        try:
            await self._redis().hdel(self._connections_key(self.id), conn.reply_channel)
        except Exception as exc:  # noqa: BLE001 - a stale entry only means one needless disconnect
            self.log.warning("forgetting connection %s failed: %s", conn.reply_channel, exc)

    def closed_soon(self, conn: Connection) -> None:
        """:meth:`closed`, for callers that cannot wait."""
        if self.enabled and conn.reply_channel in self._records:
            self.runtime.spawn(self.closed(conn), "forget connection")

    async def run(self) -> None:
        """Keep the heartbeat and reap dead instances, until cancelled."""
        if not self.enabled:
            return
        self._task = asyncio.current_task()
        while True:
            await self._beat()
            if self._healthy_since is not None and time.monotonic() - self._healthy_since >= self.timeout:
                try:
                    await self.reap()
                except Exception as exc:  # noqa: BLE001 - try again next round
                    self.log.warning("looking for dead gateway instances failed: %s", exc)
            await asyncio.sleep(self.timeout / 3)

    async def _beat(self) -> None:
        redis = self._redis()
        value = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.set(self._alive_key(self.id), value, px=_ms(self.timeout), xx=True)
                pipe.exists(self._reaped_key(self.id))  # each time: a reaper may be at it right now
                kept, reaped = await pipe.execute()
            if reaped:
                self.log.warning("this instance was taken for dead (no heartbeat for %ss) and its %d "
                                 "connection(s) reported lost; closing them", self.timeout, len(self._records))
                self._records.clear()
                self._written.clear()
                await redis.delete(self._reaped_key(self.id))
                if self.on_reaped is not None:
                    self.on_reaped()
                kept = False
            if not kept:
                # First beat, or Redis lost our keys (a restart without persistence, an
                # outage longer than the timeout): write everything again.
                if not reaped and self._healthy_since is not None:
                    self.log.warning("this instance's heartbeat had expired; recording its %d connection(s) again",
                                     len(self._records))
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.set(self._alive_key(self.id), value, px=_ms(self.timeout))
                    pipe.sadd(self._index, self.id)
                    for conn in self._records.values():
                        pipe.hset(self._connections_key(self.id), conn.reply_channel, _record(conn))
                    await pipe.execute()
                self._healthy_since = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - the layer probe reports the outage
            if self._healthy_since is not None:
                self.log.warning("heartbeat failed: %s", exc)
            self._healthy_since = None

    async def stop(self) -> None:
        """On a clean stop, after every connection closed: delete this instance's keys."""
        if not self.enabled:
            return
        if self._task is not None:  # a heartbeat after this would write the keys again
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.delete(self._alive_key(self.id), self._connections_key(self.id))
                pipe.srem(self._index, self.id)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - another instance reaps them
            self.log.warning("removing this instance's records failed: %s", exc)

    # -- dead instances ------------------------------------------------------------------

    async def reap(self) -> int:
        """Clean up after every instance whose heartbeat expired; return how many."""
        redis = self._redis()
        reaped = 0
        for raw in await redis.smembers(self._index):
            instance = raw.decode() if isinstance(raw, bytes) else raw
            if instance == self.id or await redis.exists(self._alive_key(instance)):
                continue
            claim = f"{self._prefix}:ws:reaping:{instance}"
            if not await redis.set(claim, self.id, nx=True, px=_ms(self.timeout)):
                continue  # another instance is at it
            try:
                await self._reap(instance)
                reaped += 1
            finally:
                await redis.delete(claim)
        return reaped

    async def _reap(self, instance: str) -> None:
        redis = self._redis()
        key = self._connections_key(instance)
        # Groups first: a consumer handling the disconnect sees who is really left.
        left = await self._leave_groups(instance)
        told = 0
        for reply_channel, raw in (await redis.hgetall(key)).items():
            reply_channel = reply_channel.decode() if isinstance(reply_channel, bytes) else reply_channel
            try:
                record = msgpack.unpackb(raw, raw=False)
                await self.runtime.send(record["channel"], _lost_message(reply_channel, record))
                told += 1
            except HandoffError as exc:
                # The claim expires and this or another instance tries again.
                raise RuntimeError(f"websocket.disconnect for {reply_channel} not delivered: {exc}") from exc
            except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
                self.log.warning("unreadable record of %s left by instance %s: %s", reply_channel, instance, exc)
            await redis.hdel(key, reply_channel)  # told once, even if this reaper dies now
        # Replies queued for the dead instance's connections: nobody reads them.
        process_channel = f"specific.{instance}!"
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(key, self.runtime.layer.prefix + process_channel)
            pipe.srem(self._index, instance)
            pipe.set(self._reaped_key(instance), self.id, ex=REAPED_MARK_TTL)
            await pipe.execute()
        self.log.warning("gateway instance %s is gone: told the consumers of %d connection(s), "
                         "removed %d group membership(s)", instance, told, left)

    async def _leave_groups(self, instance: str) -> int:
        """Remove every reply channel of ``instance`` from every group; return how many.

        Read from the groups themselves rather than from the records, so that a
        membership a consumer made just before the instance died, which the
        instance never heard of, goes too.
        """
        redis = self._redis()
        member_prefix = f"specific.{instance}!".encode()
        pattern = _glob_escape(f"{self._prefix}:group:") + "*"
        removed = 0
        async for group_key in redis.scan_iter(match=pattern, count=1000):
            members = [m for m in await redis.zrange(group_key, 0, -1) if m.startswith(member_prefix)]
            if members:
                removed += await redis.zrem(group_key, *members)
        return removed


def _record(conn: Connection) -> bytes:
    # msgpack, as the layer's messages: a stock consumer's state carries bytes (scope headers).
    return msgpack.packb({"channel": conn.channel, "path": conn.info.path, "kwargs": conn.kwargs,
                       "state": conn.state, "order": conn.order})


def _lost_message(reply_channel: str, record: dict[str, Any]) -> dict[str, Any]:
    """The ``websocket.disconnect`` for a connection of a dead instance."""
    message: dict[str, Any] = {
        "type": "websocket.disconnect",
        "id": uuid.uuid4().hex,
        "reply_channel": reply_channel,
        "path": record["path"],
        "kwargs": record["kwargs"],
        "order": int(record.get("order", 0)) + 1,
        "code": CLOSE_LOST,
        "lost": True,
    }
    if record.get("state"):
        message["state"] = record["state"]
    return message


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
