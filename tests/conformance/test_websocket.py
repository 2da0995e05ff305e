"""The conformance kit against the WebSocket gateway, with a websockets client."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateways.conformance import ConformanceSuite, Driver, Harness
from gateways.conformance.servers import port_open

pytestmark = pytest.mark.e2e

PATH = "/conformance/"


class WebSocketDriver(Driver):
    """Each event is a new connection (``websocket.connect``), accepted by the route."""

    protocol = "websocket"

    def __init__(self) -> None:
        self.port = 0
        self.clients: list[ClientConnection] = []
        self.refused: list[int] = []

    def section(self, harness: Harness) -> dict[str, Any]:
        self.port = harness.free_port()
        return {"listen": f"127.0.0.1:{self.port}",
                "routes": [{"path": f"^{PATH}$", "channel": "websocket.conformance", "auto_accept": True}]}

    async def ready(self, harness: Harness) -> None:
        await harness.wait_until(lambda: port_open(self.port), 20, "the gateway listening")

    async def teardown(self) -> None:
        for client in self.clients:
            await client.close()

    async def produce(self, harness: Harness) -> None:
        # The handshake completes once websocket.connect is on the layer.
        try:
            self.clients.append(await connect(f"ws://127.0.0.1:{self.port}{PATH}", open_timeout=20))
        except InvalidStatus as exc:
            self.refused.append(exc.response.status_code)

    def reply(self, received: dict[str, Any], channel: str) -> tuple[str, dict[str, Any]]:
        return received["reply_channel"], {"type": "websocket.send", "text": "conformance"}

    async def observe(self, harness: Harness, reply: dict[str, Any]) -> None:
        assert await self.clients[0].recv() == reply["text"]

    async def observe_invalid(self, harness: Harness, invalid: dict[str, Any]) -> None:
        with pytest.raises(ConnectionClosed) as closed:
            await self.clients[0].recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008  # policy violation

    async def observe_refusal(self, harness: Harness) -> None:
        await harness.wait_until(lambda: 503 in self.refused, 20, "a handshake refused with HTTP 503")


class TestWebSocketConformance(ConformanceSuite):
    driver_class = WebSocketDriver
