"""Received messages into the layer, in order per topic, acknowledged in arrival order.

The broker needs PUBACK only after the layer took the message, and MQTT
wants PUBACKs in the order the PUBLISHes came. So each received message
becomes an entry that

- waits for the previous message of the same topic to be handed off (the
  spec promises order per topic, and the layer gives no order between
  concurrent sends);
- is sent to the layer, retried with backoff for as long as the layer
  refuses (a broker redelivers only on reconnect, so giving up would lose it);
- is acknowledged once it and every message received before it are done.

Different topics are handed off concurrently, up to ``inflight`` at once.
Nothing here speaks MQTT: acknowledging is a callable the connection gives.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from gateways.core.backoff import Backoff
from gateways.core.daemon import HandoffError
from gateways.core.metrics import Metrics
from gateways.core.specs import InvalidMessage

Send = Callable[[str, dict[str, Any]], Awaitable[None]]

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
    task: asyncio.Task | None = field(default=None, repr=False)


class HandoffPipeline:
    """Hands received messages to the layer and acknowledges them in order.

    Args:
        send: the layer send (``Runtime.send``); raises HandoffError when refused.
        log: where problems are logged.
        metrics: where drops and retries are counted.
        inflight: messages being handed off at once; QoS 0 beyond it is dropped and counted.
        retry_max: longest wait between attempts while the layer refuses, in seconds.
    """

    def __init__(self, send: Send, log: logging.Logger, metrics: Metrics, inflight: int = 100,
                 retry_max: float = 5.0) -> None:
        self._send = send
        self.log = log
        self.metrics = metrics
        self.inflight = inflight
        self.retry_max = retry_max
        self._slots = asyncio.Semaphore(inflight)
        self._lanes: dict[str, asyncio.Task] = {}
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
        on and no bound from the broker, so past ``inflight`` it is dropped,
        logged and counted rather than held without bound.

        Args:
            topic: the MQTT topic (the unit of ordering).
            channel: the channel to send to.
            message: the channel message.
            qos: the delivery's QoS.
            ack: acknowledges the delivery; returns False when the connection is gone.
            source: the connection it came on (see :meth:`abandon`).
        """
        if qos == 0 and self._slots.locked():
            self.metrics.inc("mqtt_qos0_dropped_total", "QoS 0 messages dropped while the layer lagged")
            self._dropped += 1
            now = time.monotonic()
            if now - self._drop_logged >= DROP_LOG_INTERVAL:
                # One line per interval, not per message: a flood would drown the log.
                self.log.warning("dropped %d QoS 0 messages (latest on %r): %d messages already wait for "
                                 "the layer", self._dropped, topic, self.inflight)
                self._dropped = 0
                self._drop_logged = now
            return False
        await self._slots.acquire()
        entry = _Entry(topic, channel, message, qos, ack, source)
        previous = self._lanes.get(topic)
        entry.task = asyncio.create_task(self._handoff(entry, previous), name=f"mqtt handoff {topic}")
        self._lanes[topic] = entry.task
        self._order.append(entry)
        self._idle.clear()
        return True

    async def _handoff(self, entry: _Entry, previous: asyncio.Task | None) -> None:
        try:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            backoff = Backoff(0.05, self.retry_max)
            while True:
                try:
                    await self._send(entry.channel, entry.message)
                    break
                except HandoffError as exc:
                    self.metrics.inc("mqtt_handoff_retries_total", "hand-offs retried after the layer refused")
                    if not self._refusing:
                        self._refusing = True
                        self.log.warning("layer refused a message from %r (%s); holding it and retrying, "
                                         "PUBACK waits", entry.topic, exc)
                    await backoff.wait()
                except InvalidMessage as exc:
                    # A bug of the translation, not a state that retrying can fix.
                    self.metrics.inc("mqtt_handoff_invalid_total", "received messages the schema rejected")
                    self.log.error("message from %r does not match the spec, not handed off: %s", entry.topic, exc)
                    entry.handed = True
                    return
            if self._refusing:
                self._refusing = False
                self.log.info("layer accepts messages again")
            entry.handed = True
        finally:
            entry.finished = True
            if self._lanes.get(entry.topic) is entry.task:
                del self._lanes[entry.topic]
            self._slots.release()
            self._flush()

    def _flush(self) -> None:
        """Acknowledge, in arrival order, every settled message at the head."""
        while self._order and self._order[0].finished:
            entry = self._order.popleft()
            if entry.handed and entry.qos > 0 and not entry.ack():
                self.metrics.inc("mqtt_ack_lost_total", "hand-offs whose connection closed before PUBACK")
                self.log.info("connection gone before PUBACK of a message on %r; the broker will redeliver it",
                              entry.topic)
        if not self._order:
            self._idle.set()

    def abandon(self, source: object) -> int:
        """Stop handing off QoS 1/2 messages of a closed connection; return how many.

        The broker redelivers them on the next connection, so handing these
        copies over too would only make duplicates. QoS 0 ones carry on.

        Args:
            source: the connection that closed.
        """
        count = 0
        for entry in list(self._order):
            if entry.source is source and entry.qos > 0 and not entry.finished and entry.task:
                entry.task.cancel()
                count += 1
        return count

    async def drained(self) -> None:
        """Wait until every message taken has been settled."""
        await self._idle.wait()
