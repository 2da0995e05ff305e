"""The conformance kit against the MQTT gateway, on a private Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aiomqtt
import pytest

from gateways.conformance import ConformanceSuite, Driver, Harness
from servers import MosquittoServer

pytestmark = pytest.mark.e2e

RESULTS = "conformance.results"


class MqttDriver(Driver):
    """A device publishing at QoS 1 on ``conformance/in``; replies go to ``conformance/out``."""

    protocol = "mqtt"

    def __init__(self) -> None:
        self.broker: MosquittoServer | None = None
        self.clients = contextlib.AsyncExitStack()
        self.device: aiomqtt.Client | None = None
        self.listener: aiomqtt.Client | None = None
        self.published = 0

    async def setup(self, harness: Harness) -> None:
        self.broker = await asyncio.to_thread(MosquittoServer().start)
        self.device = await self.clients.enter_async_context(
            aiomqtt.Client("127.0.0.1", self.broker.port, identifier=f"device-{uuid.uuid4().hex[:8]}"))
        self.listener = await self.clients.enter_async_context(
            aiomqtt.Client("127.0.0.1", self.broker.port, identifier=f"listener-{uuid.uuid4().hex[:8]}"))
        await self.listener.subscribe("conformance/out", qos=1)

    async def teardown(self) -> None:
        try:
            await self.clients.aclose()
        finally:
            if self.broker is not None:
                self.broker.close()

    def section(self, harness: Harness) -> dict[str, Any]:
        assert self.broker is not None
        return {"broker": self.broker.url, "client_id": f"gateway-{uuid.uuid4().hex[:8]}", "reconnect_max": 1,
                "subscriptions": [{"filter": "conformance/in", "qos": 1, "channel": "mqtt.conformance"}]}

    async def ready(self, harness: Harness) -> None:
        await harness.wait_until(lambda: "subscribed to" in harness.log(), 30, "the gateway subscribed")

    async def produce(self, harness: Harness) -> None:
        assert self.device is not None
        self.published += 1
        published = self.published
        await self.device.publish("conformance/in", b"ping", qos=1)
        # The broker's PUBACK says only that the broker has it; the event is the
        # gateway's once the gateway has read it.
        await harness.wait_until(lambda: self._received(harness, published), 20, "the gateway reading the publish")

    @staticmethod
    async def _received(harness: Harness, count: int) -> bool:
        return await harness.metric("gateway_mqtt_received_total") >= count

    def reply(self, received: dict[str, Any], channel: str) -> tuple[str, dict[str, Any]]:
        return received["reply_channel"], {"type": "mqtt.publish", "topic": "conformance/out",
                                           "payload": "pong", "qos": 1}

    async def observe(self, harness: Harness, reply: dict[str, Any]) -> None:
        assert self.listener is not None
        message = await asyncio.wait_for(anext(self.listener.messages), 20)
        assert (str(message.topic), message.payload) == ("conformance/out", b"pong")

    def invalid_reply(self, received: dict[str, Any], channel: str) -> tuple[str, dict[str, Any]]:
        # With a reply_channel, so the gateway can say why it refused the request.
        return received["reply_channel"], {"type": "mqtt.publish", "topic": "conformance/out", "qos": 7,
                                           "payload": "pong", "reply_channel": RESULTS, "id": "bad"}

    async def observe_invalid(self, harness: Harness, invalid: dict[str, Any]) -> None:
        result = await asyncio.wait_for(harness.layer.receive(RESULTS), 20)
        assert harness.schema.problem(result) is None
        assert (result["type"], result["id"], result["ok"]) == ("mqtt.result", "bad", False)
        assert result["error"]

    async def observe_refusal(self, harness: Harness) -> None:
        # The gateway keeps what the full layer refused (unacknowledged to the
        # broker) and hands it off once there is room: receiving makes room.
        for _ in range(self.published):
            channel, message = await harness.receive()
            assert (channel, message["payload"]) == ("mqtt.conformance", b"ping")


class TestMqttConformance(ConformanceSuite):
    driver_class = MqttDriver
