"""The conformance kit against the Slack gateway, on the Slack stand-in (Socket Mode)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumers.testing.slack_standin import SlackStandIn, event_callback, message_event
from gateways.conformance import ConformanceSuite, Driver, Harness

pytestmark = pytest.mark.e2e

CHANNEL = "C0CONFORM"
RESULTS = "conformance.results"


class SlackDriver(Driver):
    """Slack delivering message events over Socket Mode; replies are chat.postMessage calls."""

    protocol = "slack"

    def __init__(self) -> None:
        self.standin = SlackStandIn()
        self.envelopes: list[str] = []

    async def setup(self, harness: Harness) -> None:
        self.standin.start()

    async def teardown(self) -> None:
        self.standin.stop()

    def section(self, harness: Harness) -> dict[str, Any]:
        return {"app_token": self.standin.app_token, "bot_token": self.standin.bot_token,
                "api_url": self.standin.api_url, "default_channel": "slack.conformance"}

    async def ready(self, harness: Harness) -> None:
        await harness.wait_until(lambda: self.standin.open_sockets, 30, "a Socket Mode connection")
        await harness.wait_until(lambda: "Socket Mode connected" in harness.log(), 30, "the gateway connected")

    async def produce(self, harness: Harness) -> None:
        envelope = await asyncio.to_thread(self.standin.send_envelope, "events_api",
                                           event_callback(message_event(CHANNEL, "hello")))
        self.envelopes.append(envelope)
        # Slack's delivery is the gateway's once acknowledged (after the hand-off).
        await harness.wait_until(lambda: envelope in self.standin.acks, 20, "the envelope acknowledged")

    def reply(self, received: dict[str, Any], channel: str) -> tuple[str, dict[str, Any]]:
        return received["reply_channel"], {"type": "slack.send", "action": "post", "channel": CHANNEL,
                                           "text": "conformance reply"}

    async def observe(self, harness: Harness, reply: dict[str, Any]) -> None:
        await harness.wait_until(lambda: self.standin.calls_of("chat.postMessage", text=reply["text"]), 20,
                                 "chat.postMessage with the reply")

    def invalid_reply(self, received: dict[str, Any], channel: str) -> tuple[str, dict[str, Any]]:
        return received["reply_channel"], {"type": "slack.send", "action": "no-such-action", "channel": CHANNEL,
                                           "reply_channel": RESULTS, "id": "bad"}

    async def observe_invalid(self, harness: Harness, invalid: dict[str, Any]) -> None:
        result = await asyncio.wait_for(harness.layer.receive(RESULTS), 20)
        assert harness.schema.problem(result) is None
        assert (result["type"], result["id"], result["ok"]) == ("slack.result", "bad", False)

    async def observe_refusal(self, harness: Harness) -> None:
        # What the full layer refused is not acknowledged: Slack delivers it again.
        await harness.wait_until(lambda: "not handed off" in harness.log(), 20, "a delivery logged as not handed off")
        assert any(envelope not in self.standin.acks for envelope in self.envelopes)


class TestSlackConformance(ConformanceSuite):
    driver_class = SlackDriver
