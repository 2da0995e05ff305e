"""Handing spooled messages to the layer until a consumer acknowledges them.

Each delivery (one message for one channel) is handed to the layer, then
handed again with the same ``id`` when no ``email.ack`` came within
``ack_timeout`` (doubling after each hand-off), until ``max_attempts``
hand-offs are spent: then the message goes to the dead-letter channel and its
spool file to ``dead/``. A hand-off the layer refuses (Redis down, channel
full) is retried with backoff and does not count as an attempt, so mail
accepted while Redis is down is delivered when it returns.

Only the metadata of waiting deliveries stays in memory; the raw bytes are
read back from the spool for a redelivery.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from gateways.core.handoff import HandoffItem, LayerHandoff
from gateways.core.runtime import Runtime
from gateways.email.spool import Spool, SpoolEntry
from protocol_specs.email import Delivery, Envelope, receive_message

log = logging.getLogger("gateway.email")

#: Queued hand-offs that keep their raw bytes in memory; beyond, they are read back.
MAX_QUEUED_RAW = 1000
#: Deliveries to one channel handed to the layer in one send at most.
HANDOFF_BATCH = 1000
#: Seconds between spool sweeps (deleting released segments, noting releases).
SWEEP_INTERVAL = 0.25
#: Redelivery deadlines kept beyond twice the waiting deliveries before stale ones are dropped.
TIMERS_SLACK = 1024


@dataclass
class _Entry:
    id: str
    batch: str
    offset: int | None
    envelope: dict[str, Any]
    deliveries: list[dict[str, Any]]
    open: set[int] = field(default_factory=set)
    dead: bool = False


@dataclass
class _Delivery:
    entry: _Entry
    index: int
    attempts: int = 0
    acked: bool = False
    #: Unix time of the first hand-off (for the dead-letter store's first failure).
    first_handoff: float | None = None
    #: Whether the spent message is in the dead-letter store already.
    kept: bool = False

    @property
    def id(self) -> str:
        return f"{self.entry.id}.{self.index}"


class Handoff:
    """Delivers spooled messages to their channels, at least once.

    The hand-offs themselves are the core's (:class:`~gateways.core.handoff.LayerHandoff`:
    batched, retried while the layer refuses); this class keeps what email adds:
    the message built from the spool at each hand-off, the redelivery until an
    ``email.ack``, and the dead letter when the hand-offs are spent.

    Args:
        runtime: the core runtime (``send`` hands to the layer).
        spool: the spool the entries are in.
        reply_channel: where consumers send ``email.ack`` and ``email.send``.
        dead_letter_channel: where spent messages go.
        ack_timeout: seconds before the first redelivery.
        max_attempts: hand-offs before the dead-letter channel.
        concurrency: hand-offs at once.
        linger: seconds a new delivery waits for others, so that the ones
            arriving together are handed off in one round trip (and reach a
            consumer as one fetch); 0 hands each off at once.
        parse: asks for :func:`~protocol_specs.email.parse_message` of raw
            bytes elsewhere (the parser process), as a future; asked for the
            deliveries of a linger together. ``None``: parsed at hand-off.
    """

    def __init__(self, runtime: Runtime, spool: Spool, reply_channel: str, dead_letter_channel: str,
                 ack_timeout: float, max_attempts: int, concurrency: int = 16, linger: float = 0.0,
                 parse: Callable[[bytes], asyncio.Future] | None = None) -> None:
        self.runtime = runtime
        self.spool = spool
        self.reply_channel = reply_channel
        self.dead_letter_channel = dead_letter_channel
        self.ack_timeout = ack_timeout
        self.max_attempts = max_attempts
        self.parse = parse
        self.entries: dict[str, _Entry] = {}
        self.deliveries: dict[str, _Delivery] = {}
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = 0
        self._timer_wake = asyncio.Event()
        # A linger's deliveries to one channel go to the layer in one send_many; a
        # delivery that cannot be read back or built is left out alone.
        self.to_layer = LayerHandoff(self._send, log, runtime.metrics, "email", send_many=self._send_many,
                                  batch=HANDOFF_BATCH, concurrency=concurrency, linger=linger,
                                  retry_initial=0.2, retry_max=5.0, prepare=self._prepare,
                                  on_failed=self._failed, spawn=runtime.spawn)

    @property
    def pending(self) -> int:
        """Entries not yet acknowledged nor dead."""
        return len(self.entries)

    def start(self) -> None:
        """Start the redelivery timer and the spool's sweeps."""
        self.runtime.spawn(self._timer(), "email redelivery timer")
        self.runtime.spawn(self._sweep(), "email spool sweep")

    def add(self, entry: SpoolEntry) -> None:
        """Track a spooled entry and queue its deliveries.

        Args:
            entry: written to the spool; its raw bytes are used when present.
        """
        assert entry.batch is not None, "add() takes entries the spool has written"
        tracked = _Entry(entry.id, entry.batch, entry.offset, entry.envelope, entry.deliveries,
                         open=set(range(len(entry.deliveries))))
        self.entries[entry.id] = tracked
        # While the layer is down the queue grows: past a point, re-read from the spool instead.
        raw = entry.raw if len(self.to_layer) < MAX_QUEUED_RAW else None
        for index in range(len(entry.deliveries)):
            delivery = _Delivery(tracked, index)
            self.deliveries[delivery.id] = delivery
            self._queue(delivery, raw)

    async def ack(self, delivery_id: str) -> bool:
        """Mark a delivery done; forget the entry once all its deliveries are. False if unknown."""
        delivery = self.deliveries.pop(delivery_id, None)
        if delivery is None:
            return False
        delivery.acked = True
        self._drop_stale_deadlines()  # a burst handed off together leaves all its deadlines at once
        entry = delivery.entry
        entry.open.discard(delivery.index)
        if not entry.open and not entry.dead:
            self.entries.pop(entry.id, None)
            self._entry_done(entry)
            self.runtime.metrics.inc("email_acked_total", "messages every consumer acknowledged")
        return True

    def _entry_done(self, entry: _Entry) -> None:
        self.spool.release(entry.id, entry.batch)

    async def _sweep(self) -> None:
        # Deleting released segments and noting releases waits for the disk: off
        # the event loop, a few times a second, one trip to the thread for all.
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if self.spool.needs_sweep():
                try:
                    await asyncio.to_thread(self.spool.sweep)
                except OSError as exc:
                    log.error("cannot tidy spool %s: %s", self.spool.root, exc)

    # -- internals -----------------------------------------------------------

    def _queue(self, delivery: _Delivery, raw: bytes | None) -> None:
        channel = delivery.entry.deliveries[delivery.index]["channel"]
        self.to_layer.offer(channel, None, ack=self._handed, context=(delivery, raw))

    async def _send(self, channel: str, message: dict[str, Any]) -> None:
        await self.runtime.send(channel, message)

    async def _send_many(self, channel: str, messages: list[dict[str, Any]]) -> int:
        return await self.runtime.send_many(channel, messages)

    async def _prepare(self, items: list[HandoffItem]) -> None:
        """Build the ``email.receive`` of each item, with the parse of each message
        asked for once, for all of them together; an item left without one is skipped."""
        items = [item for item in items if item.message is None]  # a dead letter comes made
        asked: dict[str, asyncio.Future | None] = {}  # one parse per message, however many deliveries
        for item in items:
            delivery, raw = item.context
            if self.parse is not None and raw is not None and delivery.entry.id not in asked:
                asked[delivery.entry.id] = self.parse(raw)
        for item in items:
            delivery, raw = item.context
            entry = delivery.entry
            if delivery.acked or entry.dead:
                continue
            try:
                if raw is None:
                    raw = (await asyncio.to_thread(self.spool.read, entry.id, entry.batch, None, entry.offset)).raw
                parsed = asked.get(entry.id)
                if parsed is not None:
                    parsed = await parsed
                item.message = self._message(delivery, raw, delivery.attempts + 1, parsed)
            except (OSError, ValueError, KeyError) as exc:
                log.error("spooled message %s cannot be read: %s", entry.id, exc)
            item.context = delivery

    def _failed(self, item: HandoffItem, exc: BaseException) -> None:
        # A bug (or GATEWAY_STRICT's schema check): the other deliveries go on.
        self.runtime.metrics.inc("email_handoff_errors_total", "hand-offs that failed with an error")
        delivery = item.context[0] if isinstance(item.context, tuple) else item.context
        log.error("handing %s off failed; it stays in the spool for the next start", delivery.id)

    def _handed(self, item: HandoffItem) -> None:
        """Count a hand-off the layer took and set its redelivery deadline."""
        if not item.handed:
            return
        delivery = item.context
        delivery.attempts += 1
        if delivery.first_handoff is None:
            delivery.first_handoff = time.time()
        if delivery.attempts > 1:
            self.runtime.metrics.inc("email_redeliveries_total", "hand-offs after the first")
        delay = self.ack_timeout * 2 ** (delivery.attempts - 1)
        self._schedule(time.monotonic() + delay, delivery.id)

    def _message(self, delivery: _Delivery, raw: bytes, attempt: int,
                 parsed: dict[str, Any] | None = None) -> dict[str, Any]:
        entry = delivery.entry
        spec = entry.deliveries[delivery.index]
        envelope = Envelope(**entry.envelope)
        return receive_message(
            raw, envelope, id=delivery.id, reply_channel=self.reply_channel,
            delivery=Delivery(spec["channel"], list(spec["recipients"]), dict(spec["kwargs"])),
            attempt=attempt, parsed=parsed,
        )

    def _schedule(self, due: float, delivery_id: str) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (due, self._timer_seq, delivery_id))
        if not self._drop_stale_deadlines() and self._timers[0][1] == self._timer_seq:
            self._timer_wake.set()  # the new earliest: the timer must wait less

    def _drop_stale_deadlines(self) -> bool:
        """Forget the deadlines of acknowledged deliveries once they outnumber the waiting ones."""
        if len(self._timers) <= 2 * len(self.deliveries) + TIMERS_SLACK:
            return False
        # Acknowledged deliveries leave their deadline behind until it is due
        # (ack_timeout later): under a steady stream that is a minute of mail.
        self._timers = [timer for timer in self._timers if timer[2] in self.deliveries]
        heapq.heapify(self._timers)
        self._timer_wake.set()
        return True

    async def _timer(self) -> None:
        while True:
            self._timer_wake.clear()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, delivery_id = heapq.heappop(self._timers)
                delivery = self.deliveries.get(delivery_id)
                if delivery is None or delivery.acked or delivery.entry.dead:
                    continue
                if delivery.attempts >= self.max_attempts:
                    await self._dead_letter(delivery)
                else:
                    self._queue(delivery, None)
            timeout = self._timers[0][0] - now if self._timers else None
            try:
                await asyncio.wait_for(self._timer_wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _dead_letter(self, delivery: _Delivery) -> None:
        entry = delivery.entry
        entry.dead = True
        self.entries.pop(entry.id, None)
        for index in range(len(entry.deliveries)):
            self.deliveries.pop(f"{entry.id}.{index}", None)
        try:
            path = await asyncio.to_thread(self.spool.bury, entry.id, entry.batch, entry.offset)
        except (OSError, ValueError, KeyError) as exc:
            # It stays in its segment in new/ and is handed again after a restart.
            log.error("cannot copy spooled message %s to dead/: %s", entry.id, exc)
            return
        self._entry_done(entry)
        self.runtime.metrics.inc("email_dead_letters_total", "messages whose hand-offs were spent")
        channel = entry.deliveries[delivery.index]["channel"]
        log.warning("message %s to %s was not acknowledged after %d hand-offs; kept in %s, sent to %s",
                    delivery.id, channel, delivery.attempts, path, self.dead_letter_channel)
        try:
            raw = (await asyncio.to_thread(self.spool.read, entry.id, path.name, path.parent)).raw
            message = self._message(delivery, raw, delivery.attempts)
        except (OSError, ValueError, KeyError) as exc:
            log.error("dead letter %s cannot be read: %s", delivery.id, exc)
            return
        await self._keep_dead_letter(delivery, dict(message))
        message["dead_letter"] = {"channel": message["channel"], "attempts": delivery.attempts,
                                  "spool_path": str(path)}
        self.to_layer.offer(self.dead_letter_channel, message, context=delivery)  # retried until taken

    async def _keep_dead_letter(self, delivery: _Delivery, message: dict[str, Any]) -> None:
        """Keep the spent message in the dead-letter store too, once, for
        ``gateway dead-letters`` (the spool's ``dead/`` copy is this host's alone)."""
        if delivery.kept:
            return
        delivery.kept = True
        first_failure = (delivery.first_handoff or time.time()) + self.ack_timeout
        await self.runtime.dead_letter(
            message["channel"], message,
            f"NotAcknowledged: no email.ack after {delivery.attempts} hand-offs (email.max_attempts)",
            delivery.attempts, min(first_failure, time.time()), direction="inbound")
