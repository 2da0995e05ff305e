"""Received messages into the layer, in order per topic, acknowledged in arrival order.

The broker needs PUBACK only after the layer took the message, and MQTT
wants PUBACKs in the order the PUBLISHes came. The core's hand-off
(:class:`~gateways.core.handoff.LayerHandoff`) does both: the topic is the
ordering key (the spec promises order per topic; the layer gives no order
between concurrent sends), a topic's waiting messages go to the layer together
with ``send_many``, what the layer refuses is retried with backoff for as long
as it refuses (a broker redelivers only on reconnect, so giving up would lose
it), and a message is acknowledged once it and every message received before
it are done.

What is MQTT's here: QoS 1 messages waiting are bounded by ``inflight`` (the
broker's in-flight window bounds them anyway) and wait for a place; QoS 0 ones
by ``qos0_backlog``, past which they are dropped and counted (there is no
redelivery to fall back on); QoS 0 needs no PUBACK. Acknowledging is a
callable the connection gives.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable

from gateways.core.handoff import HandoffItem, LayerHandoff, Room, Send, SendMany
from gateways.core.metrics import Metrics

#: Seconds between log lines about dropped QoS 0 messages.
DROP_LOG_INTERVAL = 5.0


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
        self.log = log
        self.metrics = metrics
        self.inflight = inflight
        self.qos0_backlog = qos0_backlog
        self._qos0_room = Room(qos0_backlog)
        self.to_layer = LayerHandoff(send, log, metrics, "mqtt", send_many=send_many, room=Room(inflight),
                                  batch=batch, max_sends=concurrency, retry_initial=0.05, retry_max=retry_max,
                                  ack_in_order=True, refused_note="PUBACK waits")
        self._dropped = 0
        self._drop_logged = -DROP_LOG_INTERVAL

    def __len__(self) -> int:
        """Messages received and not yet settled (handed off and acknowledged, or abandoned)."""
        return len(self.to_layer)

    async def put(self, topic: str, channel: str, message: dict[str, Any], qos: int,
                  ack: Callable[[], bool], source: object = None) -> bool:
        """Take a received message; call in arrival order. False when a QoS 0 message was dropped.

        Waits for a free place for QoS 1 and 2 (the broker's in-flight window
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
        if qos == 0:
            if self.to_layer.offer(channel, message, key=topic, source=source, context=0,
                                room=self._qos0_room) is None:
                self._drop(topic)
                return False
            return True
        await self.to_layer.put(channel, message, key=topic, ack=functools.partial(self._puback, ack),
                             source=source, context=qos)
        return True

    def _drop(self, topic: str) -> None:
        self.metrics.inc("mqtt_qos0_dropped_total", "QoS 0 messages dropped while the layer lagged")
        self._dropped += 1
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_INTERVAL:
            # One line per interval, not per message: a flood would drown the log.
            self.log.warning("dropped %d QoS 0 messages (latest on %r): %d messages already wait for "
                             "the layer", self._dropped, topic, self.qos0_backlog)
            self._dropped = 0
            self._drop_logged = now

    def _puback(self, ack: Callable[[], bool], item: HandoffItem) -> None:
        if not ack():
            self.metrics.inc("mqtt_ack_lost_total", "hand-offs whose connection closed before PUBACK")
            self.log.info("connection gone before PUBACK of a message on %r; the broker will redeliver it",
                          item.key)

    def abandon(self, source: object) -> int:
        """Stop handing off QoS 1/2 messages of a closed connection; return how many.

        The broker redelivers them on the next connection, so handing these
        copies over too would only make duplicates. QoS 0 ones carry on. A
        send already under way finishes (its copy may then arrive twice).

        Args:
            source: the connection that closed.
        """
        return self.to_layer.abandon(source, keep=_qos0)

    async def drained(self) -> None:
        """Wait until every message taken has been settled."""
        await self.to_layer.drained()


def _qos0(item: HandoffItem) -> bool:
    return item.context == 0
