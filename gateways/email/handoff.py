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

from gateways.core.backoff import Backoff
from gateways.core.runtime import HandoffError, Runtime
from gateways.email.spool import Spool, SpoolEntry
from protocol_specs.email import Delivery, Envelope, receive_message

log = logging.getLogger("gateway.email")

#: Queued hand-offs that keep their raw bytes in memory; beyond, they are read back.
MAX_QUEUED_RAW = 1000
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


_Queued = tuple[_Delivery, bytes | None, asyncio.Future | None]


class Handoff:
    """Delivers spooled messages to their channels, at least once.

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
        self.concurrency = concurrency
        self.linger = linger
        self.parse = parse
        self.entries: dict[str, _Entry] = {}
        self.deliveries: dict[str, _Delivery] = {}
        self._ready: asyncio.Queue[_Queued] = asyncio.Queue()
        self._lingering: list[tuple[_Delivery, bytes | None]] = []
        self._together = 0  # deliveries in batch hand-offs
        self._linger_wake = asyncio.Event()
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = 0
        self._timer_wake = asyncio.Event()
        self._layer_backoff = Backoff(0.2, 5.0)
        self._layer_gate = asyncio.Event()
        self._layer_gate.set()

    @property
    def pending(self) -> int:
        """Entries not yet acknowledged nor dead."""
        return len(self.entries)

    def start(self) -> None:
        """Start the hand-off workers and the redelivery timer."""
        for n in range(self.concurrency):
            self.runtime.spawn(self._worker(), f"email hand-off {n}")
        if self.linger:
            self.runtime.spawn(self._pace(), "email hand-off linger")
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
        keep = self._ready.qsize() + len(self._lingering) + self._together < MAX_QUEUED_RAW
        raw = entry.raw if keep else None
        added = []
        for index in range(len(entry.deliveries)):
            delivery = _Delivery(tracked, index)
            self.deliveries[delivery.id] = delivery
            added.append((delivery, raw))
        if self.linger:
            self._lingering.extend(added)
            self._linger_wake.set()
        else:
            self._release(added)

    async def ack(self, delivery_id: str) -> bool:
        """Mark a delivery done; forget the entry once all its deliveries are. False if unknown."""
        delivery = self.deliveries.pop(delivery_id, None)
        if delivery is None:
            return False
        delivery.acked = True
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

    async def _pace(self) -> None:
        # Like a Nagle delay: the first delivery after a quiet spell waits
        # ``linger`` for company, then all that came meanwhile go to the workers
        # in one loop iteration, so their sends share a round trip to the layer
        # (and their parses one trip to the parser process).
        # The workers never sleep, so the rate is not bounded by the window.
        while True:
            await self._linger_wake.wait()
            await asyncio.sleep(self.linger)
            self._linger_wake.clear()
            batch, self._lingering = self._lingering, []
            self._release(batch)

    def _release(self, batch: list[tuple[_Delivery, bytes | None]]) -> None:
        """Hand ``batch`` off, with the parse of each message asked for once.

        Several deliveries go to the layer together (:meth:`_hand_together`);
        a single one goes to the workers."""
        asked: dict[str, asyncio.Future] = {}  # one parse per message, however many deliveries
        queued: list[_Queued] = []
        for delivery, raw in batch:
            parsed = None
            if raw is not None and self.parse is not None:
                if delivery.entry.id not in asked:
                    asked[delivery.entry.id] = self.parse(raw)
                parsed = asked[delivery.entry.id]
            queued.append((delivery, raw, parsed))
        if len(queued) > 1:
            self._together += len(queued)
            self.runtime.spawn(self._hand_together(queued), "email hand-off batch")
        else:
            for item in queued:
                self._ready.put_nowait(item)

    async def _hand_together(self, queued: list[_Queued]) -> None:
        # The fast path: one send_many per channel for a linger's deliveries, so
        # each costs no task switch of its own. Whatever it did not hand off (the
        # layer full or down, a message that cannot be built, a delivery whose
        # raw bytes are back in the spool) goes to the workers, which retry and
        # report each delivery on its own.
        handed: set[str] = set()
        try:
            if not self._layer_gate.is_set():
                return
            ready: dict[str, list[tuple[_Delivery, dict[str, Any]]]] = {}
            for delivery, raw, parsed in queued:
                if isinstance(parsed, asyncio.Future):
                    parsed = await parsed
                if raw is None or delivery.acked or delivery.entry.dead:
                    continue
                channel = delivery.entry.deliveries[delivery.index]["channel"]
                ready.setdefault(channel, []).append(
                    (delivery, self._message(delivery, raw, delivery.attempts + 1, parsed)))
            for channel, items in ready.items():
                taken = await self.runtime.send_many(channel, [message for _, message in items])
                self._layer_up()
                for delivery, _ in items[:taken]:
                    self._handed(delivery)
                    handed.add(delivery.id)
        except HandoffError as exc:
            log.debug("batch hand-off refused (%s); handing its deliveries one by one", exc)
        except Exception:  # noqa: BLE001 - the workers hand each off and log what fails
            log.exception("batch hand-off failed; handing its deliveries one by one")
        finally:
            self._together -= len(queued)
            for item in queued:
                if item[0].id not in handed:
                    self._ready.put_nowait(item)

    async def _worker(self) -> None:
        while True:
            delivery, raw, parsed = await self._ready.get()
            if delivery.acked or delivery.entry.dead:
                continue
            try:
                await self._hand(delivery, raw, parsed)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug (or GATEWAY_STRICT's schema check): keep the other deliveries going
                self.runtime.metrics.inc("email_handoff_errors_total", "hand-offs that failed with an error")
                log.exception("handing %s off failed; it stays in the spool for the next start", delivery.id)

    async def _hand(self, delivery: _Delivery, raw: bytes | None,
                    parsed: dict[str, Any] | asyncio.Future | None = None) -> None:
        entry = delivery.entry
        if isinstance(parsed, asyncio.Future):
            parsed = await parsed
        while True:
            await self._layer_gate.wait()
            if delivery.acked:
                return
            try:
                if raw is None:
                    raw = (await asyncio.to_thread(self.spool.read, entry.id, entry.batch, None, entry.offset)).raw
                message = self._message(delivery, raw, delivery.attempts + 1, parsed)
            except (OSError, ValueError, KeyError) as exc:
                log.error("spooled message %s cannot be read: %s", entry.id, exc)
                return
            channel = entry.deliveries[delivery.index]["channel"]
            try:
                await self.runtime.send(channel, message)
            except HandoffError as exc:
                await self._layer_refused(exc)
                continue
            self._layer_up()
            self._handed(delivery)
            return

    def _layer_up(self) -> None:
        self._layer_backoff.reset()
        self._layer_gate.set()

    def _handed(self, delivery: _Delivery) -> None:
        """Count a hand-off of ``delivery`` the layer took and set its redelivery deadline."""
        delivery.attempts += 1
        if delivery.first_handoff is None:
            delivery.first_handoff = time.time()
        if delivery.attempts > 1:
            self.runtime.metrics.inc("email_redeliveries_total", "hand-offs after the first")
        delay = self.ack_timeout * 2 ** (delivery.attempts - 1)
        self._schedule(time.monotonic() + delay, delivery.id)

    async def _layer_refused(self, exc: HandoffError) -> None:
        # One worker waits out the backoff; the others wait at the gate
        # instead of hammering a layer that is down.
        if not self._layer_gate.is_set():
            await self._layer_gate.wait()
            return
        self._layer_gate.clear()
        log.debug("hand-off refused (%s); retrying", exc)
        try:
            await self._layer_backoff.wait()
        finally:
            self._layer_gate.set()

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
        if len(self._timers) > 2 * len(self.deliveries) + TIMERS_SLACK:
            # Acknowledged deliveries leave their deadline behind until it is due
            # (ack_timeout later): under a steady stream that is a minute of mail.
            self._timers = [timer for timer in self._timers if timer[2] in self.deliveries]
            heapq.heapify(self._timers)
            self._timer_wake.set()
        elif self._timers[0][1] == self._timer_seq:  # the new earliest: the timer must wait less
            self._timer_wake.set()

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
                    self._ready.put_nowait((delivery, None, None))
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
        self.runtime.spawn(self._send_dead_letter(delivery, path), f"dead letter {delivery.id}")

    async def _keep_dead_letter(self, delivery: _Delivery, message: dict[str, Any]) -> None:
        """Keep the spent message in the dead-letter store too, once, for
        ``gateway dead-letters`` (the spool's ``dead/`` copy is this host's alone)."""
        if delivery.kept:
            return  # the layer refused the dead-letter channel's send: this runs again
        delivery.kept = True
        first_failure = (delivery.first_handoff or time.time()) + self.ack_timeout
        await self.runtime.dead_letter(
            message["channel"], message,
            f"NotAcknowledged: no email.ack after {delivery.attempts} hand-offs (email.max_attempts)",
            delivery.attempts, min(first_failure, time.time()), direction="inbound")

    async def _send_dead_letter(self, delivery: _Delivery, path: Any) -> None:
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                raw = (await asyncio.to_thread(self.spool.read, delivery.entry.id, path.name, path.parent)).raw
                message = self._message(delivery, raw, delivery.attempts)
                await self._keep_dead_letter(delivery, message)
                message["dead_letter"] = {"channel": message["channel"], "attempts": delivery.attempts,
                                          "spool_path": str(path)}
                await self.runtime.send(self.dead_letter_channel, message)
                return
            except HandoffError:
                await backoff.wait()
            except (OSError, ValueError, KeyError) as exc:
                log.error("dead letter %s cannot be read: %s", delivery.id, exc)
                return
