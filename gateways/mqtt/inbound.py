"""Received messages into the layer, in order per topic, acknowledged in arrival order.

The broker needs PUBACK only after the layer took the message, and MQTT
wants PUBACKs in the order the PUBLISHes came. So each received message
becomes an entry that

- waits in its topic's lane for the previous message of the same topic to
  be handed off (the spec promises order per topic, and the layer gives no
  order between concurrent sends); with ``send_many`` (the batched layer),
  the messages waiting at a lane's head go together in one ordered send, one
  such hand-off in flight per topic, and the layer reports the prefix it
  took, so the refused rest is retried in order behind it;
- is sent to the layer, retried with backoff for as long as the layer
  refuses (a broker redelivers only on reconnect, so giving up would lose it);
- is acknowledged once it and every message received before it are done.

Different topics are handed off concurrently. QoS 1 messages waiting are
bounded by ``inflight`` (the broker's in-flight window bounds them anyway);
QoS 0 messages waiting by ``qos0_backlog``.
Nothing here speaks MQTT: acknowledging is a callable the connection gives.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from gateways.core.backoff import Backoff
from gateways.core.runtime import HandoffError
from gateways.core.metrics import Metrics
from gateways.core.specs import InvalidMessage

Send = Callable[[str, dict[str, Any]], Awaitable[None]]
#: Sends messages in order in one go; returns how many the layer took (a prefix).
SendMany = Callable[[str, list[dict[str, Any]]], Awaitable[int]]

#: Seconds between log lines about dropped QoS 0 messages.
DROP_LOG_INTERVAL = 5.0


@dataclass(eq=False)
class _Entry:
    topic: str
    channel: str
    message: dict[str, Any]
    qos: int
    ack: Callable[[], bool]
    source: object
    handed: bool = False
    finished: bool = False
    abandoned: bool = False


class HandoffPipeline:
    """Hands received messages to the layer and acknowledges them in order.

    Args:
        send: the layer send (``Runtime.send``); raises HandoffError when refused.
        log: where problems are logged.
        metrics: where drops and retries are counted.
        inflight: QoS 1/2 messages waiting for the layer at most (further ones wait to be read).
        qos0_backlog: QoS 0 messages waiting for the layer at most; more are dropped and counted.
        concurrency: layer sends at once (below the layer's connection pool, which fails past its size).
        retry_max: longest wait between attempts while the layer refuses, in seconds.
        send_many: the layer's ordered many-message send (``Runtime.send_many``): when
            given, a topic's waiting messages are handed off together, up to ``batch``
            at a time, still one hand-off in flight per topic. It must take a prefix
            of what it is given, in order (the rest refused); the rest is retried
            in order, so the topic's order holds.
        batch: most messages of one topic in one ``send_many``.
    """

    def __init__(self, send: Send, log: logging.Logger, metrics: Metrics, inflight: int = 100,
                 qos0_backlog: int = 10000, concurrency: int = 32, retry_max: float = 5.0,
                 send_many: SendMany | None = None, batch: int = 100) -> None:
        self._send = send
        self._send_many = send_many
        self.batch = max(1, batch)
        self.log = log
        self.metrics = metrics
        self.inflight = inflight
        self.qos0_backlog = qos0_backlog
        self._qos0_waiting = 0
        self.retry_max = retry_max
        self._slots = asyncio.Semaphore(inflight)
        self._lanes: dict[str, collections.deque[_Entry]] = {}
        self._workers: set[asyncio.Task] = set()
        self._sending = asyncio.Semaphore(concurrency)
        self._order: collections.deque[_Entry] = collections.deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._refusing = False
        self._dropped = 0
        self._drop_logged = -DROP_LOG_INTERVAL

    def __len__(self) -> int:
        """Messages received and not yet settled (handed off and acknowledged, or abandoned)."""
        return len(self._order)

    async def put(self, topic: str, channel: str, message: dict[str, Any], qos: int,
                  ack: Callable[[], bool], source: object = None) -> bool:
        """Take a received message; call in arrival order. False when a QoS 0 message was dropped.

        Waits for a free slot for QoS 1 and 2 (the broker's in-flight window
        bounds how many there can be); QoS 0 has no redelivery to fall back
        on and no bound from the broker, so past ``qos0_backlog`` it is dropped,
        logged and counted rather than held without bound.

        Args:
            topic: the MQTT topic (the unit of ordering).
            channel: the channel to send to.
            message: the channel message.
            qos: the delivery's QoS.
            ack: acknowledges the delivery; returns False when the connection is gone.
            source: the connection it came on (see :meth:`abandon`).
        """
        if qos == 0 and self._qos0_waiting >= self.qos0_backlog:
            self.metrics.inc("mqtt_qos0_dropped_total", "QoS 0 messages dropped while the layer lagged")
            self._dropped += 1
            now = time.monotonic()
            if now - self._drop_logged >= DROP_LOG_INTERVAL:
                # One line per interval, not per message: a flood would drown the log.
                self.log.warning("dropped %d QoS 0 messages (latest on %r): %d messages already wait for "
                                 "the layer", self._dropped, topic, self.qos0_backlog)
                self._dropped = 0
                self._drop_logged = now
            return False
        if qos == 0:
            self._qos0_waiting += 1
        else:
            await self._slots.acquire()
        entry = _Entry(topic, channel, message, qos, ack, source)
        self._order.append(entry)
        self._idle.clear()
        lane = self._lanes.get(topic)
        if lane is None:
            # One worker per topic with messages waiting: a topic's hand-offs
            # run one after the other, different topics' side by side.
            lane = self._lanes[topic] = collections.deque()
            worker = asyncio.create_task(self._run_lane(topic, lane), name=f"mqtt lane {topic}")
            self._workers.add(worker)  # the loop keeps only weak references to tasks
            worker.add_done_callback(self._workers.discard)
        lane.append(entry)
        return True

    async def _run_lane(self, topic: str, lane: collections.deque[_Entry]) -> None:
        """Hand off one topic's messages in order: every message waiting at the
        lane's head (same channel, up to ``batch``) in one ordered send when
        the layer can, else one at a time."""
        size = self.batch if self._send_many is not None else 1
        try:
            while lane:
                head = lane[0]
                entries = [head]
                for entry in itertools.islice(lane, 1, size):
                    if entry.channel != head.channel:
                        break
                    entries.append(entry)
                try:
                    if self._send_many is not None:
                        await self._handoff_many(entries)
                    elif not head.abandoned:
                        await self._handoff(head)
                finally:
                    for entry in entries:
                        lane.popleft()
                        entry.finished = True
                        if entry.qos == 0:
                            self._qos0_waiting -= 1
                        else:
                            self._slots.release()
                    self._flush()
        finally:
            if self._lanes.get(topic) is lane:
                del self._lanes[topic]

    async def _handoff_many(self, entries: list[_Entry]) -> None:
        """Hand off ``entries`` (one topic's, in order, one channel) until all are
        taken or abandoned; what the layer refused is retried, in order, after
        what it took."""
        assert self._send_many is not None
        backoff = Backoff(0.05, self.retry_max)
        channel = entries[0].channel
        waiting = entries
        while True:
            waiting = [entry for entry in waiting if not entry.abandoned]
            if not waiting:
                return
            try:
                async with self._sending:
                    taken = await self._send_many(channel, [entry.message for entry in waiting])
            except HandoffError as exc:
                self._refused(waiting[0], exc)
                await backoff.wait()
                continue
            except Exception:  # noqa: BLE001 - InvalidMessage, or a message the layer cannot serialize
                # Nothing was sent (checked or serialized first): find the bad ones one at a time.
                for entry in waiting:
                    if not entry.abandoned:
                        await self._handoff(entry)
                return
            for entry in waiting[:taken]:
                entry.handed = True
            waiting = waiting[taken:]
            if not waiting:
                self._accepted()
                return
            # The rest was refused (full): retried in order, after what was taken.
            self._refused(waiting[0], HandoffError("full", f"channel {channel!r} is full"))
            if taken:
                backoff.reset()
            await backoff.wait()

    def _refused(self, entry: _Entry, exc: HandoffError) -> None:
        self.metrics.inc("mqtt_handoff_retries_total", "hand-offs retried after the layer refused")
        if not self._refusing:
            self._refusing = True
            self.log.warning("layer refused a message from %r (%s); holding it and retrying, "
                             "PUBACK waits", entry.topic, exc)

    def _accepted(self) -> None:
        if self._refusing:
            self._refusing = False
            self.log.info("layer accepts messages again")

    async def _handoff(self, entry: _Entry) -> None:
        backoff = Backoff(0.05, self.retry_max)
        while not entry.abandoned:
            try:
                async with self._sending:
                    await self._send(entry.channel, entry.message)
            except HandoffError as exc:
                self._refused(entry, exc)
                await backoff.wait()
                continue
            except InvalidMessage as exc:
                # A bug of the translation, not a state that retrying can fix.
                self.metrics.inc("mqtt_handoff_invalid_total", "received messages the schema rejected")
                self.log.error("message from %r does not match the spec, not handed off: %s", entry.topic, exc)
            except Exception as exc:  # noqa: BLE001 - e.g. the layer cannot serialize it
                # Retrying cannot help either, and an exception here would end the
                # topic's lane with the message neither handed off nor acknowledged.
                self.metrics.inc("mqtt_handoff_invalid_total", "received messages the schema rejected")
                self.log.error("message from %r could not be handed off, dropped: %s: %s", entry.topic,
                               type(exc).__name__, exc)
            entry.handed = True
            self._accepted()
            return

    def _flush(self) -> None:
        """Acknowledge, in arrival order, every settled message at the head."""
        while self._order and self._order[0].finished:
            entry = self._order.popleft()
            if entry.handed and entry.qos > 0 and not entry.abandoned and not entry.ack():
                self.metrics.inc("mqtt_ack_lost_total", "hand-offs whose connection closed before PUBACK")
                self.log.info("connection gone before PUBACK of a message on %r; the broker will redeliver it",
                              entry.topic)
        if not self._order:
            self._idle.set()

    def abandon(self, source: object) -> int:
        """Stop handing off QoS 1/2 messages of a closed connection; return how many.

        The broker redelivers them on the next connection, so handing these
        copies over too would only make duplicates. QoS 0 ones carry on. A
        send already under way finishes (its copy may then arrive twice).

        Args:
            source: the connection that closed.
        """
        count = 0
        for entry in self._order:
            if entry.source is source and entry.qos > 0 and not entry.handed and not entry.abandoned:
                entry.abandoned = True
                count += 1
        return count

    async def drained(self) -> None:
        """Wait until every message taken has been settled."""
        await self._idle.wait()
