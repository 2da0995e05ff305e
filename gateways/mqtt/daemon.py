"""``gateway mqtt``: the MQTT gateway daemon."""

from __future__ import annotations

import asyncio
import shutil
import socket
from typing import Any

from gateways.core.config import Config
from gateways.core.gateway import Gateway, InvalidMessage, Service, StackUnavailable
from gateways.core.runtime import Runtime
from gateways.mqtt.config import MqttSection
from gateways.mqtt.connection import BrokerConnection
from gateways.mqtt.inbound import HandoffPipeline
from gateways.mqtt.outbound import Pending, RequestQueue
from gateways.mqtt.protocol import (
    PUBLISH,
    SubscribeRequest,
    parse_request,
    result_message,
)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
#: Most messages of one topic handed to the layer in one send.
HANDOFF_BATCH = 100


class MqttGateway(Gateway, protocol="mqtt", section_class=MqttSection):
    """Subscribes to the configured topics, hands messages to the layer,
    publishes and (un)subscribes for consumers (its arguments are :class:`Gateway`'s)."""

    def __init__(self, runtime: Runtime, section: MqttSection) -> None:
        super().__init__(runtime, section)
        # A topic's waiting messages go to the layer together (one round trip with the
        # batched layer), in order: a single topic is no longer capped at one send per round trip.
        self.pipeline = HandoffPipeline(runtime.send, self.log, runtime.metrics, section.inflight,
                                        section.qos0_backlog, max(1, runtime.config.layer.max_connections // 2),
                                        send_many=runtime.send_many,
                                        batch=min(HANDOFF_BATCH, getattr(runtime.layer, "send_batch", HANDOFF_BATCH)))
        self.requests = RequestQueue(section.outage_queue)
        self.connection = BrokerConnection(section, self.pipeline, self.requests, self._report_pending, self.log,
                                           runtime.metrics)
        self._task: asyncio.Task | None = None
        self._queueing = asyncio.Lock()

    # -- what `gateway up` asks ----------------------------------------------

    @classmethod
    def consumer_channels(cls, section: MqttSection) -> list[str]:
        """Every subscription's channel (``mqtt.publish`` when none is configured).

        ``mqtt.publish`` also gets messages no known subscription matches;
        list it in ``django.channels`` to have workers for those.
        """
        from protocol_specs.mqtt import consumer_channels

        return consumer_channels(section)

    @classmethod
    def conversation_key(cls, message: dict[str, Any]) -> Any:
        """The topic: the spec keeps order per topic (``mqtt.result`` has no order to keep).

        Every inbound message has the same reply_channel (``mqtt.send``), so
        the core's default would put all topics into one conversation.
        """
        from protocol_specs.mqtt import conversation_key

        return conversation_key(message)

    @classmethod
    def stack_services(cls, section: MqttSection, config: Config) -> list[Service]:
        """Mosquitto on the broker's local port, unless a broker already listens there."""
        if section.host not in LOCAL_HOSTS or section.tls:
            return []
        if _listening(section.host, section.port):
            return []
        binary = shutil.which("mosquitto")
        if binary is None:
            raise StackUnavailable(
                f"MQTT skipped: no broker on {section.host}:{section.port} and mosquitto is not installed; "
                "add MQTT with `apt-get install mosquitto` (or point mqtt.broker at a running broker)"
            )
        # Without -c, Mosquitto 2 listens on loopback only and allows anonymous clients.
        return [Service("mosquitto", [binary, "-p", str(section.port)], port=section.port)]

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting; the first connection is not awaited (the loop retries with backoff)."""
        self._task = self.runtime.spawn(self.connection.run(), "mqtt connection")

    async def handle(self, channel: str, message: dict[str, Any]) -> None:
        """Queue a consumer's publish, subscribe or unsubscribe for the broker."""
        try:
            request = parse_request(message, PUBLISH)
        except ValueError as exc:
            raise InvalidMessage(str(exc)) from exc
        if isinstance(request, SubscribeRequest):
            sub = request.subscription
            if sub.qos > sub.granted_qos:
                self.log.warning("mqtt.subscribe %r asks for QoS 2: served at QoS 1", sub.filter)
        pending = Pending(message, request)
        # Requests queue in arrival order: one that must wait for room holds the
        # lock, and those behind it wait their turn (a free lock is taken at once).
        async with self._queueing:
            while not self.requests.put(pending):
                if self.connection.connected.is_set():
                    # Connected, the queue drains as fast as the broker answers: wait
                    # for room (the receive loop, and so the layer, hold the rest)
                    # rather than refuse a burst. Checked again now and then, in case
                    # the link drops meanwhile.
                    await self.requests.room(0.5)
                    continue
                self.runtime.metrics.inc("mqtt_outage_queue_full_total", "requests refused: outage queue full")
                self.log.warning("%s refused: broker unreachable and %d requests already wait for it "
                                 "(mqtt.outage_queue)", message["type"], self.requests.maxsize)
                await self._report(message, False, f"broker unreachable and {self.requests.maxsize} requests "
                                   "already wait for it (mqtt.outage_queue)")
                return

    def failure_result(self, message: dict[str, Any], problem: str) -> dict[str, Any]:
        """``mqtt.result`` with ``ok`` false and the problem as the error."""
        return result_message(message, False, problem)

    async def stop_accepting(self) -> None:
        """Read no more messages from the broker; the unread ones are redelivered later."""
        self.connection.stop_reading()

    async def drain(self) -> None:
        """Wait for hand-offs (and their PUBACKs) and for queued requests while connected."""
        await self.pipeline.drained()
        while self.connection.connected.is_set() and (len(self.requests) or self.connection.unsettled):
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Disconnect; report the requests that never reached the broker as failed."""
        await self.connection.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            except Exception:  # noqa: BLE001 - closing anyway; the task logs its own failure
                pass
        for pending in self.requests.take_all():
            await self._report(pending.message, False, "gateway stopped before the broker was reachable")

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while connected to the broker."""
        connected = self.connection.connected.is_set()
        return connected, {"broker": connected, "handoffs": len(self.pipeline), "queued": len(self.requests)}

    # -- outcomes --------------------------------------------------------------

    async def _report_pending(self, pending: Pending, ok: bool, error: str | None, **details: Any) -> None:
        await self._report(pending.message, ok, error, **details)

    async def _report(self, message: Any, ok: bool, error: str | None, **details: Any) -> None:
        await self.runtime.report(message, result_message(message, ok, error, **details))


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False

