"""Run a channel's consumer concurrently while keeping each conversation in order.

A *lane* is one instance of the Django project's ASGI application (what
``runworker`` runs once per channel) with a FIFO of messages. A conversation
with messages in flight is pinned to one lane, so its messages are handled
one after another, in arrival order; other conversations get other lanes and
run at the same time. A lane is free again once its conversation has nothing
in flight. A channel has at most ``concurrency`` lanes and ``limit`` messages
in flight; past that, :meth:`ChannelLanes.submit` waits, which stops the
listener taking more off the layer.

The instance tells the lane it finished a message by asking for the next one
(Channels' ``await_many_dispatch`` calls ``receive`` again only after
``dispatch`` returned).

Sync code (a ``SyncConsumer``, a ``def`` handler, anything behind
``database_sync_to_async``) is thread-sensitive, as under ``runworker``: by
default every lane of every channel runs it on asgiref's one thread-sensitive
thread, one call at a time, so a database that takes one writer at a time
(SQLite) never sees two. Async code still runs concurrently on the loop.
With ``parallel_sync`` each lane runs in its own ``ThreadSensitiveContext``
instead: one thread per lane, sync handlers of different conversations in
parallel.

An instance that raises is replaced by a new instance reading the same
lane, and other lanes never notice. With a retry policy (``gateway worker``
always gives one) the failed message is tried again by that new instance
after a backoff delay, up to the policy's attempts; meanwhile the lane holds
its conversation, so the conversation's later messages wait and keep their
order while other conversations go on. Each failed attempt is a WARNING
naming the channel, the message (see :func:`gateways.core.describe.describe`),
the conversation, ``attempt n/N`` and the next delay. A message given up
(its last attempt failed, or it raised ``PermanentFailure``) goes to the
``give_up`` callback (:class:`gateways.core.retries.DeadLetters`). The scope
then carries ``worker_retries``, so that a gateway consumer raises its
handlers' exceptions on instead of swallowing them.

Without a policy a failure is logged and the message dropped, as under
``runworker``. With one, a message whose ``id`` is already in flight on the
channel (a gateway's redelivery of a message still being retried) is dropped
as a duplicate: it would otherwise be handled twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Hashable

from asgiref.sync import ThreadSensitiveContext

from consumers.failures import RETRIES_SCOPE_KEY
from gateways.core.backoff import Backoff
from gateways.core.config import RetryConfig
from gateways.core.describe import describe
from gateways.core.retries import Failure, GiveUp, message_id

log = logging.getLogger("gateway.worker")

#: Maps a message to its conversation; ``None`` means "no order to keep".
KeyFunction = Callable[[dict[str, Any]], Hashable | None]


@dataclass
class _Item:
    conversation: Hashable | None
    message: dict[str, Any]
    failure: Failure | None = None


class Lane:
    """One application instance and the queue of the conversation it serves.

    Args:
        lanes: the channel's lanes this one belongs to.
        index: its number, for the task's name.
    """

    def __init__(self, lanes: "ChannelLanes", index: int) -> None:
        self.lanes = lanes
        self.index = index
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.conversation: Hashable | None = None
        self.current: _Item | None = None
        #: A failed message the next instance takes first, after its delay.
        self.retrying: _Item | None = None
        self.taken = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """Run the application instance(s) of this lane as a task."""
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"lane {self.lanes.channel}#{self.index}")

    async def _run(self) -> None:
        lanes = self.lanes
        scope = {"type": "channel", "channel": lanes.channel}
        if lanes.retry is not None:
            scope[RETRIES_SCOPE_KEY] = True
        while True:
            self.taken = 0
            try:
                # Without a context of its own the instance's sync calls go to the
                # process's one thread-sensitive thread, shared by every lane.
                context = ThreadSensitiveContext() if lanes.parallel_sync else contextlib.nullcontext()
                async with context:
                    await lanes.application(dict(scope), self.receive, self.send)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                item = self.current
                lanes.stats["failed"] += 1
                if item is None:
                    log.exception("consumer on %s failed before taking a message", lanes.channel)
                elif lanes.retry is None:
                    log.exception("consumer on %s failed handling %s (conversation %s); a new instance "
                                  "takes over", lanes.channel, describe(item.message), item.conversation)
                else:
                    self.current = None
                    await self._failed(item, exc)
                    continue
            if self.current is not None:
                self._finished()
            if not self.taken:  # an instance that ends without taking a message must not spin
                await asyncio.sleep(1.0)

    async def _failed(self, item: _Item, exc: Exception) -> None:
        """Retry ``item`` after its delay, holding the lane, or give it up."""
        lanes = self.lanes
        policy = lanes.retry
        assert policy is not None
        failure = item.failure = item.failure or Failure(lanes.channel, item.message, item.conversation)
        failure.failed(exc)
        if failure.permanent or failure.attempts >= policy.attempts:
            lanes.stats["dead_lettered"] += 1
            try:
                if lanes.give_up is not None:
                    await lanes.give_up(failure)
                else:
                    log.error("consumer on %s gave up %s (conversation %s) after %d attempt(s):\n%s",
                              lanes.channel, describe(item.message), item.conversation, failure.attempts,
                              failure.error)
            finally:
                lanes._message_done(self, item)
            return
        backoff = Backoff(policy.initial_delay, policy.max_delay)
        backoff.attempts = failure.attempts - 1
        delay = backoff.next_delay()
        log.warning("consumer on %s failed handling %s (conversation %s), attempt %d/%d: %s; retrying in %.2fs",
                    lanes.channel, describe(item.message), item.conversation, failure.attempts, policy.attempts,
                    failure.summary, delay)
        lanes.stats["retried"] += 1
        self.retrying = item
        await asyncio.sleep(delay)

    async def receive(self) -> dict[str, Any]:
        """The instance's ASGI ``receive``: asking for the next message means the
        previous one is done."""
        if self.current is not None:
            self.lanes.stats["handled"] += 1
            self._finished()
        if self.retrying is not None:
            item, self.retrying = self.retrying, None
        else:
            item = await self.queue.get()
        self.current = item
        self.taken += 1
        return item.message

    async def send(self, message: dict[str, Any]) -> None:
        """The instance's ASGI ``send``: channel-type scopes have no peer to send to."""
        raise NotImplementedError("a worker channel has no ASGI send; reply through the channel layer")

    def _finished(self) -> None:
        item, self.current = self.current, None
        self.lanes._message_done(self, item)


class ChannelLanes:
    """The lanes of one channel.

    Args:
        channel: the channel name (the scope's ``channel``).
        application: the project's ASGI application.
        key: maps a message to its conversation.
        concurrency: most lanes (messages handled at once).
        limit: most messages in flight (handled or queued in lanes).
        parallel_sync: run each lane's sync code on a thread of its own instead
            of the one thread-sensitive thread every lane shares.
        retry: how a failed message is retried; ``None``: it is logged and dropped.
        give_up: called with each message given up after its retries.
    """

    def __init__(self, channel: str, application: Callable[..., Awaitable[None]], key: KeyFunction,
                 concurrency: int = 64, limit: int | None = None, parallel_sync: bool = False,
                 retry: RetryConfig | None = None, give_up: GiveUp | None = None) -> None:
        self.channel = channel
        self.parallel_sync = parallel_sync
        self.application = application
        self.key = key
        self.concurrency = max(1, concurrency)
        self.limit = limit or 4 * self.concurrency
        self.lanes: list[Lane] = []
        self.free: collections.deque[Lane] = collections.deque()
        self.busy: dict[Hashable, Lane] = {}
        self.inflight = 0
        self.retry = retry
        self.give_up = give_up
        #: ids of the messages in flight (only with a retry policy), to drop redeliveries.
        self.inflight_ids: collections.Counter = collections.Counter()
        self.stats: collections.Counter = collections.Counter()
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    async def submit(self, message: dict[str, Any]) -> None:
        """Queue ``message`` behind its conversation's earlier messages; wait while
        the channel is at its limits."""
        try:
            conversation = self.key(message)
        except Exception:  # a key function must not lose the message
            log.exception("conversation key of %s on %s failed; handling it unordered",
                          describe(message), self.channel)
            conversation = None
        ident = message_id(message) if self.retry is not None else None
        if ident is not None and ident in self.inflight_ids:
            self.stats["duplicates"] += 1
            log.info("%s on %s is in flight here already (being handled or retried); dropping this "
                     "redelivery", describe(message), self.channel)
            return
        while self.inflight >= self.limit:
            await self._wait_change()
        lane = self.busy.get(conversation) if conversation is not None else None
        if lane is None:
            lane = await self._free_lane()
            lane.conversation = conversation
            if conversation is not None:
                self.busy[conversation] = lane
        self.inflight += 1
        if ident is not None:
            self.inflight_ids[ident] += 1
        self._idle.clear()
        lane.queue.put_nowait(_Item(conversation, message))

    async def _free_lane(self) -> Lane:
        while True:
            if self.free:
                return self.free.popleft()
            if len(self.lanes) < self.concurrency:
                lane = Lane(self, len(self.lanes))
                self.lanes.append(lane)
                lane.start()
                return lane
            await self._wait_change()

    async def _wait_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def _message_done(self, lane: Lane, item: _Item | None) -> None:
        self.inflight -= 1
        ident = message_id(item.message) if item is not None and self.retry is not None else None
        if ident is not None:
            self.inflight_ids[ident] -= 1
            if self.inflight_ids[ident] <= 0:
                del self.inflight_ids[ident]
        if lane.queue.empty() and lane.retrying is None:
            if lane.conversation is not None and self.busy.get(lane.conversation) is lane:
                del self.busy[lane.conversation]
            lane.conversation = None
            self.free.append(lane)
        self._changed.set()
        if not self.inflight:
            self._idle.set()

    async def idle(self) -> None:
        """Wait until every submitted message was handled."""
        await self._idle.wait()

    async def give_up_retries(self) -> int:
        """Give up every message that failed before and waits for, or is in,
        its next attempt (a stopping worker out of time); return how many."""
        count = 0
        for lane in self.lanes:
            item = lane.retrying or lane.current
            if item is None or item.failure is None:
                continue
            lane.retrying = lane.current = None
            if lane.task is not None:
                lane.task.cancel()
            count += 1
            self.stats["dead_lettered"] += 1
            if self.give_up is not None:
                await self.give_up(item.failure)
            self._message_done(lane, item)
        return count

    async def close(self) -> None:
        """Stop every lane's instance."""
        tasks = [lane.task for lane in self.lanes if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
