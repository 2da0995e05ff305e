"""Handing received messages to the layer: batched, in order per key, bounded, retried, acknowledged.

Every gateway hands what its protocol delivered to the channel layer the same
way, and :class:`LayerHandoff` is that way:

- *ordering per key*: items with a key (an MQTT topic) go through that key's
  lane, one hand-off at a time, in the order they were put; items without a
  key share one lane that up to ``concurrency`` hand-offs drain side by side,
  in no particular order;
- *batching*: the items waiting at the head of a lane for one channel go to
  the layer together in one ``send_many`` (one round trip with the batched
  layer), up to ``batch``; ``linger`` holds a new item back a moment so that
  items arriving together leave together;
- *backpressure*: an item takes a place in a :class:`Room` until it settles;
  :meth:`LayerHandoff.put` waits for a free place and :meth:`LayerHandoff.offer`
  is refused when none is. What that means is the protocol's to say (an
  unread socket, a PUBACK held back, an SMTP 4xx);
- *retries*: what the layer refuses is sent again, in order, with backoff,
  until it is taken or abandoned; while a channel refuses, one hand-off waits
  out the backoff and the others to that channel wait for it;
- *acknowledgement*: an item's ``ack`` runs once its hand-off is over (the
  layer took it, or it can never take it), in arrival order when asked
  (MQTT's PUBACKs), else at once; :meth:`HandoffItem.wait_settled` awaits the same;
- *drain*: :meth:`LayerHandoff.drain` waits for every item to settle, for at
  most a grace period.

Nothing here knows a protocol: what an ack does, and what a refused
:meth:`~LayerHandoff.offer` means, are the caller's.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from typing import Any, Awaitable, Callable, Coroutine, Hashable

from gateways.core.backoff import Backoff
from gateways.core.metrics import Metrics
from gateways.core.runtime import HandoffError
from gateways.core.specs import InvalidMessage

Send = Callable[[str, dict[str, Any]], Awaitable[None]]
#: Sends messages in order in one go; returns how many the layer took (a prefix).
SendMany = Callable[[str, list[dict[str, Any]]], Awaitable[int]]
#: Fills in the ``message`` of items put without one, just before their hand-off;
#: an item left without one is skipped (it settles without an ack).
Prepare = Callable[[list["HandoffItem"]], Awaitable[None]]
#: Runs a coroutine as a task (``Runtime.spawn``, which logs a task's failure).
Spawn = Callable[[Coroutine[Any, Any, Any], str], asyncio.Task]


class Room:
    """Places for items waiting for the layer: ``size`` at most, or any number when ``None``.

    Waiters get places in the order they asked.
    """

    def __init__(self, size: int | None = None) -> None:
        self.size = size
        self.used = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def try_take(self) -> bool:
        """Take a place if one is free now (and nobody waits for one)."""
        if self.size is not None and (self.used >= self.size or self._waiters):
            return False
        self.used += 1
        return True

    async def take(self) -> None:
        """Take a place, waiting for one to be given back when none is free."""
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # the place came just as the waiter gave up: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def give_back(self) -> None:
        """Free a place: the longest waiter gets it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place passes on as it is: ``used`` stays
                return
        self.used -= 1


class HandoffItem:
    """One message on its way to the layer.

    Attributes:
        channel: where it goes.
        message: the channel message; ``None`` until ``prepare`` makes it.
        key: its ordering key; ``None``: no order to keep.
        ack: called once the hand-off is over (taken, or failed), unless abandoned.
        source: what it came on (see :meth:`LayerHandoff.abandon`).
        context: the caller's own, e.g. what ``prepare`` needs.
        handed: the layer took it.
        settled: its hand-off is over.
        abandoned: the caller no longer wants it handed off (it is not acknowledged).
        skipped: ``prepare`` made no message for it (it is not acknowledged).
        failed: the layer can never take it (it is acknowledged: a redelivery would fail alike).
    """

    __slots__ = ("channel", "message", "key", "ack", "source", "context", "room",
                 "handed", "settled", "abandoned", "skipped", "failed", "_waiter")

    def __init__(self, channel: str, message: dict[str, Any] | None, key: Hashable | None,
                 ack: Callable[["HandoffItem"], Any] | None, source: object, context: Any,
                 room: Room | None) -> None:
        self.channel = channel
        self.message = message
        self.key = key
        self.ack = ack
        self.source = source
        self.context = context
        self.room = room
        self.handed = False
        self.settled = False
        self.abandoned = False
        self.skipped = False
        self.failed = False
        self._waiter: asyncio.Future | None = None

    async def wait_settled(self) -> bool:
        """Wait until the hand-off is over; whether the layer took it."""
        if not self.settled:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
        return self.handed


class _Lane:
    """Items waiting in order, and the hand-offs draining them."""

    __slots__ = ("key", "items", "limit", "senders", "takers")

    def __init__(self, key: Hashable | None, limit: int) -> None:
        self.key = key
        self.items: collections.deque[HandoffItem] = collections.deque()
        self.limit = limit
        self.senders = 0  # tasks draining the lane
        self.takers = 0   # of those, the ones not inside a hand-off (about to take the next items)


class LayerHandoff:
    """Hands items to the layer and acknowledges each once its hand-off is over.

    Args:
        send: the layer send (``Runtime.send``); raises ``HandoffError`` when refused.
        log: where problems are logged.
        metrics: where retries and failures are counted.
        prefix: the protocol's name, the start of the metric names
            (``<prefix>_handoff_retries_total``, ``<prefix>_handoff_invalid_total``).
        send_many: the layer's ordered many-message send (``Runtime.send_many``);
            when given, a lane's waiting items for one channel go together. It
            must take a prefix of what it is given (the rest is retried, in order).
        room: the places items take until they settle (default: unbounded).
        batch: most items in one ``send_many``.
        concurrency: hand-offs at once of items without a key.
        max_sends: layer sends at once over all lanes (below the layer's
            connection pool, which fails past its size); ``None``: no bound.
        retry_initial: first wait after the layer refused, in seconds.
        retry_max: longest wait between attempts while the layer refuses.
        ack_in_order: acknowledge items in the order they were put (an item
            waits for every earlier one to settle), as MQTT wants its PUBACKs.
        linger: seconds a new item waits for others before its hand-off, so
            that items arriving together go in one round trip; 0: at once.
        prepare: makes the messages of items put without one, a lane's batch
            at a time, just before their hand-off.
        on_failed: told of an item the layer can never take (after it is logged and counted).
        refused_note: added to the line logged when the layer starts refusing
            (what the protocol's peer sees meanwhile).
        spawn: runs the hand-off tasks (``Runtime.spawn``: tracked, cancelled on exit);
            default: tasks of this hand-off's own, stopped by :meth:`close`.
    """

    def __init__(self, send: Send, log: logging.Logger, metrics: Metrics, prefix: str, *,
                 send_many: SendMany | None = None, room: Room | None = None, batch: int = 100,
                 concurrency: int = 16, max_sends: int | None = None, retry_initial: float = 0.05,
                 retry_max: float = 5.0, ack_in_order: bool = False, linger: float = 0.0,
                 prepare: Prepare | None = None,
                 on_failed: Callable[[HandoffItem, BaseException], None] | None = None,
                 refused_note: str = "", spawn: Spawn | None = None) -> None:
        self._send = send
        self._send_many = send_many
        self.log = log
        self.metrics = metrics
        self.prefix = prefix
        self.room = room if room is not None else Room()
        self.batch = max(1, batch)
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.ack_in_order = ack_in_order
        self.linger = linger
        self._prepare = prepare
        self._on_failed = on_failed
        self._refused_note = refused_note
        self._spawn = spawn
        self._sending = asyncio.Semaphore(max_sends) if max_sends else None
        self._loose = _Lane(None, max(1, concurrency))
        self._lanes: dict[Hashable, _Lane] = {}
        self._tasks: set[asyncio.Task] = set()
        self._order: collections.deque[HandoffItem] = collections.deque()
        self._lingering: list[HandoffItem] = []
        self._under_way: dict[int, list[HandoffItem]] = {}
        self._linger_timer: asyncio.TimerHandle | None = None
        self._backoffs: dict[str, Backoff] = {}
        self._waiting_out: dict[str, asyncio.Event] = {}
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._refusing = False

    def __len__(self) -> int:
        """Items put and not yet done with (settled, and acknowledged when in order)."""
        return self._pending

    # -- putting items in ------------------------------------------------------------

    async def put(self, channel: str, message: dict[str, Any] | None, *, key: Hashable | None = None,
                  ack: Callable[[HandoffItem], Any] | None = None, source: object = None,
                  context: Any = None, room: Room | None = None) -> HandoffItem:
        """Queue a message for the layer, waiting for a place in ``room`` (default: this
        hand-off's); call in arrival order.

        Args:
            channel: where it goes.
            message: the channel message (``None``: ``prepare`` makes it).
            key: its ordering key; ``None``: no order to keep.
            ack: called with the item once its hand-off is over, unless abandoned.
            source: what it came on (see :meth:`abandon`).
            context: kept on the item for the caller.
            room: the places it counts against.
        """
        room = room or self.room
        await room.take()
        return self._enqueue(HandoffItem(channel, message, key, ack, source, context, room))

    def offer(self, channel: str, message: dict[str, Any] | None, *, key: Hashable | None = None,
              ack: Callable[[HandoffItem], Any] | None = None, source: object = None,
              context: Any = None, room: Room | None = None) -> HandoffItem | None:
        """Like :meth:`put` without waiting: ``None`` when ``room`` has no free place."""
        room = room or self.room
        if not room.try_take():
            return None
        return self._enqueue(HandoffItem(channel, message, key, ack, source, context, room))

    def abandon(self, source: object, keep: Callable[[HandoffItem], bool] | None = None) -> int:
        """Stop handing off the items that came on ``source``; return how many.

        A hand-off already under way finishes. Abandoned items are not acknowledged.

        Args:
            source: what they came on (a closed connection).
            keep: items it says True for carry on.
        """
        count = 0
        lanes = itertools.chain([self._loose], self._lanes.values())
        unsettled = itertools.chain(self._lingering, *(lane.items for lane in lanes), *self._under_way.values())
        for item in unsettled:
            if item.source is source and not item.handed and not item.abandoned and (keep is None or not keep(item)):
                item.abandoned = True
                count += 1
        return count

    def _enqueue(self, item: HandoffItem) -> HandoffItem:
        self._pending += 1
        self._idle.clear()
        if self.ack_in_order:
            self._order.append(item)
        if self.linger:
            # Like a Nagle delay: the first item after a quiet spell waits for company,
            # then all that came meanwhile leave in one loop iteration.
            self._lingering.append(item)
            if self._linger_timer is None:
                self._linger_timer = asyncio.get_running_loop().call_later(self.linger, self._release_lingering)
        else:
            self._release(item)
        return item

    def _release_lingering(self) -> None:
        self._linger_timer = None
        items, self._lingering = self._lingering, []
        for item in items:
            self._release(item)

    def _release(self, item: HandoffItem) -> None:
        if item.key is None:
            lane = self._loose
        else:
            lane = self._lanes.get(item.key)
            if lane is None:
                lane = self._lanes[item.key] = _Lane(item.key, 1)
        lane.items.append(item)
        self._kick(lane)

    def _kick(self, lane: _Lane) -> None:
        """Start one more hand-off on ``lane`` when it has items nobody is about to take."""
        if lane.items and not lane.takers and lane.senders < lane.limit:
            lane.senders += 1
            lane.takers += 1
            name = f"{self.prefix} hand-off {lane.key}"
            if self._spawn is not None:
                self._spawn(self._drain_lane(lane), name)
                return
            task = asyncio.create_task(self._drain_lane(lane), name=name)
            self._tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

    # -- handing off -------------------------------------------------------------------

    async def _drain_lane(self, lane: _Lane) -> None:
        """Hand off a lane's items: the ones at its head for one channel (up to
        ``batch``) together, each batch after the previous one when the lane keeps order."""
        size = self.batch if self._send_many is not None else 1
        try:
            while lane.items:
                head = lane.items.popleft()
                items = [head]
                while lane.items and len(items) < size and lane.items[0].channel == head.channel:
                    items.append(lane.items.popleft())
                lane.takers -= 1
                self._kick(lane)  # without a key, the rest need not wait for this hand-off
                self._under_way[id(items)] = items
                try:
                    await self._hand_off(items)
                finally:
                    del self._under_way[id(items)]
                    lane.takers += 1
                    for item in items:
                        self._settle(item)
        finally:
            lane.takers -= 1
            lane.senders -= 1
            if not lane.senders and lane.key is not None and self._lanes.get(lane.key) is lane:
                del self._lanes[lane.key]

    async def _hand_off(self, items: list[HandoffItem]) -> None:
        """Hand ``items`` (one channel's, in order) off until each is taken, abandoned or failed."""
        if self._prepare is not None and any(item.message is None for item in items):
            try:
                await self._prepare(items)
            except Exception as exc:  # noqa: BLE001 - a bug of the caller's: these items, not the lane
                for item in items:
                    if item.message is None:
                        self._failed(item, exc)
            for item in items:
                if item.message is None and not item.failed:
                    item.skipped = True
        channel = items[0].channel
        waiting = items
        while True:
            waiting = [item for item in waiting if not (item.abandoned or item.skipped or item.failed)]
            if not waiting:
                return
            await self._wait_out(channel)
            waiting = [item for item in waiting if not item.abandoned]
            if not waiting:
                return
            try:
                if self._send_many is None:
                    await self._send_one(channel, waiting[0].message)
                    taken = 1
                else:
                    taken = await self._send_some(channel, [item.message for item in waiting])
            except HandoffError as exc:
                await self._refused(channel, waiting[0], exc)
                continue
            except Exception as exc:  # noqa: BLE001 - InvalidMessage, or a message the layer cannot serialize
                if self._send_many is None:  # retrying cannot help, and the lane must go on
                    self._failed(waiting[0], exc)
                    continue
                # Nothing was sent (checked or serialized first): find the bad ones one at a time.
                for item in waiting:
                    await self._hand_off_alone(item)
                return
            for item in waiting[:taken]:
                item.handed = True
            waiting = waiting[taken:]
            if not waiting:
                self._accepted(channel)
                return
            # The rest was refused (full): retried in order, after what was taken.
            if taken:
                self._backoffs.pop(channel, None)
            await self._refused(channel, waiting[0], HandoffError("full", f"channel {channel!r} is full"))

    async def _hand_off_alone(self, item: HandoffItem) -> None:
        """Hand one item off, retrying refusals; log and count one the layer can never take."""
        while not item.abandoned:
            await self._wait_out(item.channel)
            if item.abandoned:
                return
            try:
                await self._send_one(item.channel, item.message)
            except HandoffError as exc:
                await self._refused(item.channel, item, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - retrying cannot help; the lane must go on
                self._failed(item, exc)
                return
            item.handed = True
            self._accepted(item.channel)
            return

    async def _send_one(self, channel: str, message: Any) -> None:
        if self._sending is None:
            await self._send(channel, message)
            return
        async with self._sending:
            await self._send(channel, message)

    async def _send_some(self, channel: str, messages: list[Any]) -> int:
        assert self._send_many is not None
        if self._sending is None:
            return await self._send_many(channel, messages)
        async with self._sending:
            return await self._send_many(channel, messages)

    def _failed(self, item: HandoffItem, exc: BaseException) -> None:
        """``item`` can never be handed off: its hand-off is over (and acknowledged: a
        redelivery would fail the same way)."""
        self.metrics.inc(f"{self.prefix}_handoff_invalid_total", "received messages the layer could never take")
        where = f"from {item.key!r}" if item.key is not None else f"for {item.channel!r}"
        if isinstance(exc, InvalidMessage):
            # A bug of the translation, not a state that retrying can fix.
            self.log.error("message %s does not match the spec, not handed off: %s", where, exc)
        else:
            self.log.error("message %s could not be handed off, dropped: %s: %s", where,
                           type(exc).__name__, exc)
        item.failed = True
        if self._on_failed is not None:
            self._on_failed(item, exc)

    async def _wait_out(self, channel: str) -> None:
        """Wait while another hand-off to ``channel`` waits out the layer's refusal."""
        event = self._waiting_out.get(channel)
        while event is not None:
            await event.wait()
            event = self._waiting_out.get(channel)

    async def _refused(self, channel: str, item: HandoffItem, exc: HandoffError) -> None:
        # One hand-off waits out the backoff; the others to the channel wait for it
        # instead of hammering a layer that is down.
        self.metrics.inc(f"{self.prefix}_handoff_retries_total", "hand-offs retried after the layer refused")
        if not self._refusing:
            self._refusing = True
            where = f"from {item.key!r}" if item.key is not None else f"to {channel!r}"
            self.log.warning("layer refused a message %s (%s); holding it and retrying%s", where, exc,
                             f", {self._refused_note}" if self._refused_note else "")
        if channel in self._waiting_out:
            return
        backoff = self._backoffs.get(channel)
        if backoff is None:
            backoff = self._backoffs[channel] = Backoff(self.retry_initial, self.retry_max)
        event = self._waiting_out[channel] = asyncio.Event()
        try:
            await backoff.wait()
        finally:
            del self._waiting_out[channel]
            event.set()

    def _accepted(self, channel: str) -> None:
        self._backoffs.pop(channel, None)
        if self._refusing:
            self._refusing = False
            self.log.info("layer accepts messages again")

    # -- settling ----------------------------------------------------------------------

    def _settle(self, item: HandoffItem) -> None:
        item.settled = True
        if item.room is not None:
            item.room.give_back()
            item.room = None
        if item._waiter is not None and not item._waiter.done():
            item._waiter.set_result(item.handed)
        if self.ack_in_order:
            self._flush()
        else:
            self._finish(item)

    def _flush(self) -> None:
        """Acknowledge, in arrival order, every settled item at the head."""
        order = self._order
        while order and order[0].settled:
            self._finish(order.popleft())

    def _finish(self, item: HandoffItem) -> None:
        self._pending -= 1
        # Not for an item whose hand-off was cut short (stopping): its protocol redelivers it.
        if item.ack is not None and (item.handed or item.failed) and not item.abandoned:
            item.ack(item)
        if not self._pending:
            self._idle.set()

    # -- stopping ----------------------------------------------------------------------

    async def drained(self) -> None:
        """Wait until every item put is done with."""
        await self._idle.wait()

    async def drain(self, grace: float) -> bool:
        """Wait until every item put is done with, for at most ``grace`` seconds; whether it was."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop every hand-off under way (what is left is the caller's to recover)."""
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
