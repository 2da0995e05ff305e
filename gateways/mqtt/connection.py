"""The broker connection: connect, resubscribe, read, publish, reconnect.

One :class:`BrokerConnection` per gateway process. It keeps one aiomqtt
client at a time (:class:`~gateways.mqtt.manual_ack.ManualAckClient`), and
after every (re)connect subscribes to every configured and runtime
subscription again before reading. Received messages go to the
:class:`~gateways.mqtt.inbound.HandoffPipeline`; consumers' requests come
from a :class:`~gateways.mqtt.outbound.RequestQueue` and are carried out in
order while connected (and wait there while not).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateways.core.backoff import Backoff
from gateways.core.metrics import Metrics
from gateways.mqtt.config import MqttSection
from gateways.mqtt.inbound import HandoffPipeline
from gateways.mqtt.manual_ack import Delivery, ManualAckClient, wait_disconnected
from gateways.mqtt.outbound import Pending, RequestQueue
from gateways.mqtt.properties import from_paho, to_paho
from gateways.mqtt.protocol import (
    PublishRequest,
    Received,
    SubscribeRequest,
    Subscription,
    UnsubscribeRequest,
    inbound_message,
    route,
)

#: Topics whose subscription is remembered; the cache starts over beyond it.
ROUTE_CACHE_SIZE = 10000

#: Reports a request's outcome: (pending request, ok, error, details).
Report = Callable[..., Awaitable[None]]


class BrokerConnection:
    """Keeps the gateway connected to its broker.

    Args:
        section: the ``mqtt:`` section.
        pipeline: where received messages go.
        requests: consumers' requests to carry out.
        report: sends a request's outcome to its reply channel.
        log: the gateway's logger.
        metrics: the gateway's metrics.
    """

    def __init__(self, section: MqttSection, pipeline: HandoffPipeline, requests: RequestQueue,
                 report: Report, log: logging.Logger, metrics: Metrics) -> None:
        self.section = section
        self.pipeline = pipeline
        self.requests = requests
        self.report = report
        self.log = log
        self.metrics = metrics
        self.client: ManualAckClient | None = None
        self.connected = asyncio.Event()
        #: Runtime subscriptions (consumers' mqtt.subscribe), after the configured ones.
        self.runtime_subscriptions: dict[str, Subscription] = {}
        self._configured = section.configured_subscriptions()
        self._routes: dict[str, Subscription | None] = {}
        self._reading = True
        self._closing = asyncio.Event()
        self._unsettled: dict[int, Pending] = {}
        self._op_slots = asyncio.Semaphore(max(1, section.inflight))
        self._op_tasks: set[asyncio.Task] = set()
        for sub in self._configured:
            if sub.qos > sub.granted_qos:
                log.warning("subscription %r asks for QoS %d: served at QoS %d, because the gateway can "
                            "hold back PUBACK but not PUBREC", sub.filter, sub.qos, sub.granted_qos)

    # -- what the gateway asks ----------------------------------------------

    def subscriptions(self) -> list[Subscription]:
        """Every subscription in routing order: configured first, then runtime ones."""
        known = {s.filter for s in self._configured}
        return self._configured + [s for f, s in self.runtime_subscriptions.items() if f not in known]

    def route(self, topic: str) -> Subscription | None:
        """The subscription a message on ``topic`` belongs to (cached: topics repeat)."""
        try:
            return self._routes[topic]
        except KeyError:
            pass
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()
        found = self._routes[topic] = route(self.subscriptions(), topic)
        return found

    def _subscriptions_changed(self) -> None:
        self._routes.clear()

    def stop_reading(self) -> None:
        """Take no more messages from the broker; unread ones stay unacknowledged (redelivered later)."""
        self._reading = False

    async def close(self) -> None:
        """Disconnect and end :meth:`run`."""
        self._closing.set()

    @property
    def unsettled(self) -> int:
        """Requests sent to the broker and not confirmed yet."""
        return len(self._unsettled)

    # -- the connection loop -------------------------------------------------

    def _make_client(self) -> ManualAckClient:
        s = self.section
        kwargs: dict[str, Any] = {
            "identifier": s.identifier,
            "username": s.username,
            "password": s.password,
            "keepalive": s.keepalive,
            "timeout": s.publish_timeout,
            "logger": self.log.getChild("paho"),
        }
        if s.tls:
            kwargs["tls_params"] = aiomqtt.TLSParameters(ca_certs=s.ca_file, certfile=s.cert_file,
                                                         keyfile=s.key_file)
        if s.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = min(s.inflight, 65535)
            if s.session_expiry:
                props.SessionExpiryInterval = s.session_expiry
            kwargs.update(protocol=aiomqtt.ProtocolVersion.V5, properties=props,
                          clean_start=s.session_expiry == 0)
        else:
            kwargs.update(protocol=aiomqtt.ProtocolVersion.V311, clean_session=s.session_expiry == 0)
        return ManualAckClient(s.host, s.port, **kwargs)

    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff until :meth:`close`."""
        backoff = Backoff(0.2, self.section.reconnect_max)
        down_logged = False
        while not self._closing.is_set():
            client = self._make_client()
            try:
                async with client:
                    self.client = client
                    backoff.reset()
                    down_logged = False
                    self.log.info("connected to %s as %r (session %s)", self.section.broker,
                                  self.section.identifier, "resumed" if client.session_present else "new")
                    self.metrics.inc("mqtt_connects_total", "connections made to the broker")
                    await self._subscribe_all(client)
                    self.connected.set()
                    self.metrics.set("mqtt_connected", 1, "whether the broker connection is up")
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                if not down_logged:
                    self.log.warning("broker %s: %s; reconnecting", self.section.broker, exc)
                    down_logged = True
            except OSError as exc:
                self.log.warning("broker %s: %s; reconnecting", self.section.broker, exc)
            finally:
                was_connected = self.client is client
                self.client = None
                self.connected.clear()
                self.metrics.set("mqtt_connected", 0, "whether the broker connection is up")
                abandoned = self.pipeline.abandon(client)
                if abandoned:
                    self.log.info("%d unacknowledged messages left to the broker to redeliver", abandoned)
                if was_connected:
                    self.log.info("disconnected from %s", self.section.broker)
            if self._closing.is_set():
                break
            try:
                await asyncio.wait_for(self._closing.wait(), backoff.next_delay())
            except asyncio.TimeoutError:
                pass

    async def _subscribe_all(self, client: ManualAckClient) -> None:
        subscriptions = self.subscriptions()
        if not subscriptions:
            return
        codes = await client.subscribe([self._topic_option(s) for s in subscriptions])
        for sub, code in zip(subscriptions, codes):
            if _failed(code):
                self.log.error("broker refused subscription %r: %s", sub.filter, code)
        self.log.info("subscribed to %s", ", ".join(s.filter for s in subscriptions))

    def _topic_option(self, sub: Subscription) -> tuple[str, Any]:
        if self.section.mqtt5:
            # retainHandling 1: retained messages only for a subscription the
            # session did not hold yet, so a resumed session gets no repeats.
            return sub.filter, SubscribeOptions(qos=sub.granted_qos, retainHandling=1)
        return sub.filter, sub.granted_qos

    async def _serve(self, client: ManualAckClient) -> None:
        reader = asyncio.create_task(self._read(client), name="mqtt read")
        sender = asyncio.create_task(self._send_requests(client), name="mqtt requests")
        lost = asyncio.create_task(wait_disconnected(client), name="mqtt lost")
        closing = asyncio.create_task(self._closing.wait(), name="mqtt closing")
        waiting = {reader, sender, lost, closing}
        try:
            while True:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if lost in done or closing in done:
                    break
                failed = [t for t in done if t.exception() is not None]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
                waiting -= done  # the reader stopped as asked; keep the connection for PUBACKs
        finally:
            for task in (reader, sender, lost, closing):
                task.cancel()
            await asyncio.gather(reader, sender, lost, closing, return_exceptions=True)
            await self._put_back_unsettled()
        if lost.done() and not lost.cancelled() and not self._closing.is_set():
            raise aiomqtt.MqttError("connection lost")

    async def _read(self, client: ManualAckClient) -> None:
        while self._reading:
            delivery: Delivery = await client.next_delivery()
            if not self._reading:
                return  # left unacknowledged: the broker redelivers it
            await self._take(client, delivery)

    async def _take(self, client: ManualAckClient, delivery: Delivery) -> None:
        self.metrics.inc("mqtt_received_total", "messages received from the broker", qos=str(delivery.qos))
        mid, qos = delivery.mid, delivery.qos
        try:
            received = Received(delivery.topic, delivery.payload, delivery.qos, delivery.retain, delivery.dup,
                                from_paho(delivery.properties))
            subscription = self.route(delivery.topic)
            channel, message = inbound_message(received, subscription, self.section.send_channel)
        except Exception:  # noqa: BLE001 - a bug of the translation must not end the link
            # Left unacknowledged, the broker would hand the same message over
            # after every reconnect: acknowledge it (out of turn; a broker accepts that).
            self.metrics.inc("mqtt_untranslatable_total", "received messages the gateway could not translate")
            self.log.exception("message on %r could not be translated; acknowledged and dropped",
                               delivery.topic)
            if qos > 0:
                client.ack(mid, qos)
            return
        if subscription is None:
            self.metrics.inc("mqtt_unrouted_total", "messages no known subscription matched")
            self.log.warning("message on %r matches no subscription of this gateway (one the broker kept "
                             "in the session?): sent to the default channel", delivery.topic)
        if message["type"] != "mqtt.publish":
            self.metrics.inc("mqtt_undecodable_total", "payloads that did not decode")
            self.log.warning("payload on %r did not decode (%s): sent as mqtt.undecodable", delivery.topic,
                             message.get("error"))
        await self.pipeline.put(delivery.topic, channel, message, qos, lambda: client.ack(mid, qos), client)

    # -- consumers' requests -------------------------------------------------

    async def _send_requests(self, client: ManualAckClient) -> None:
        while True:
            pending = await self.requests.get()
            await self._op_slots.acquire()
            self._unsettled[pending.seq] = pending
            # Tasks start in creation order and each hands its packet to paho
            # before its first await, so requests reach the broker in order.
            task = asyncio.create_task(self._carry_out(client, pending), name="mqtt request")
            self._op_tasks.add(task)
            task.add_done_callback(self._op_done)

    def _op_done(self, task: asyncio.Task) -> None:
        self._op_tasks.discard(task)
        self._op_slots.release()

    async def _carry_out(self, client: ManualAckClient, pending: Pending) -> None:
        request = pending.request
        try:
            if isinstance(request, PublishRequest):
                details = {"topic": request.topic}
                if request.properties and not self.section.mqtt5:
                    raise ValueError("properties need MQTT 5 (mqtt.version is 3.1.1)")
                properties = to_paho(request.properties)
                await client.publish(request.topic, request.payload, request.qos, request.retain, properties)
                self.metrics.inc("mqtt_published_total", "messages published for consumers", qos=str(request.qos))
            elif isinstance(request, SubscribeRequest):
                sub = request.subscription
                details = {"filter": sub.filter}
                (code,) = await client.subscribe([self._topic_option(sub)])
                if _failed(code):
                    raise aiomqtt.MqttError(f"broker refused the subscription: {code}")
                self.runtime_subscriptions[sub.filter] = sub
                self._subscriptions_changed()
                details["granted_qos"] = _code_value(code)
            else:
                assert isinstance(request, UnsubscribeRequest)
                details = {"filter": request.filter}
                await client.unsubscribe(request.filter)
                self.runtime_subscriptions.pop(request.filter, None)
                self._subscriptions_changed()
        except Exception as exc:  # MqttError, ValueError (bad properties), paho errors
            if not client.connected:
                return  # stays unsettled: put back and retried after reconnect
            self._unsettled.pop(pending.seq, None)
            self.metrics.inc("mqtt_request_failures_total", "consumer requests the broker did not carry out")
            self.log.warning("%s failed: %s", pending.message.get("type"), exc)
            await self.report(pending, False, str(exc), **details)
            return
        self._unsettled.pop(pending.seq, None)
        await self.report(pending, True, None, **details)

    async def _put_back_unsettled(self) -> None:
        tasks = list(self._op_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        items = list(self._unsettled.values())
        self._unsettled.clear()
        if items:
            self.requests.put_back(items)
            self.log.info("%d requests unconfirmed when the connection ended: retried after reconnect",
                          len(items))


def _failed(code: Any) -> bool:
    value = _code_value(code)
    return value >= 0x80


def _code_value(code: Any) -> int:
    return int(getattr(code, "value", code))
