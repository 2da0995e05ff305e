"""The conformance kit against the email gateway: smtplib in, an aiosmtpd relay out."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from gateways.conformance import ConformanceSuite, Driver, Harness
from gateways.conformance.servers import port_open

pytestmark = pytest.mark.e2e

DOMAIN = "conformance.test"
RESULTS = "conformance.results"


class _Relay:
    """What the gateway relays to: an aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.subjects: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        text = envelope.original_content.decode("utf-8", "replace")
        subject = next((line[9:] for line in text.splitlines() if line.startswith("Subject: ")), "")
        with self.lock:
            self.subjects.append(subject)
        return "250 2.0.0 relayed"


class EmailDriver(Driver):
    """A mail client sending to ``inbox@conformance.test``; replies go out through the relay."""

    protocol = "email"

    def __init__(self) -> None:
        self.port = 0
        self.relay = _Relay()
        self.controller: Controller | None = None
        self.sent = 0

    async def setup(self, harness: Harness) -> None:
        self.controller = Controller(self.relay, hostname="127.0.0.1", port=harness.free_port())
        self.controller.start()

    async def teardown(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    def section(self, harness: Harness) -> dict[str, Any]:
        assert self.controller is not None
        self.port = harness.free_port()
        return {"listen": f"127.0.0.1:{self.port}", "domains": [DOMAIN], "hostname": "gw.conformance.test",
                "relay": f"smtp://127.0.0.1:{self.controller.port}",
                "spool": str(harness.directory / "spool"), "relay_retry_initial": 0.2, "relay_retry_max": 1.0}

    async def ready(self, harness: Harness) -> None:
        await harness.wait_until(lambda: port_open(self.port), 20, "the gateway listening")

    def _send(self) -> None:
        message = EmailMessage()
        message["From"] = "client@example.org"
        message["To"] = f"inbox@{DOMAIN}"
        message["Subject"] = "conformance"
        message.set_content("hello")
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.send_message(message)  # returns on 250: the message is in the spool

    async def produce(self, harness: Harness) -> None:
        self.sent += 1
        await asyncio.to_thread(self._send)

    def reply(self, received: dict[str, Any], channel: str) -> tuple[str, dict[str, Any]]:
        return "email.send", {"type": "email.send", "from": f"inbox@{DOMAIN}", "to": "client@example.org",
                              "subject": "conformance reply", "text": "hello back"}

    async def observe(self, harness: Harness, reply: dict[str, Any]) -> None:
        await harness.wait_until(lambda: reply["subject"] in self.relay.subjects, 30, "the reply relayed")

    def invalid_reply(self, received: dict[str, Any], channel: str) -> tuple[str, dict[str, Any]]:
        return "email.send", {"type": "email.send", "from": f"inbox@{DOMAIN}", "to": "client@example.org",
                              "subject": {"not": "a string"}, "reply_channel": RESULTS, "id": "bad"}

    async def observe_invalid(self, harness: Harness, invalid: dict[str, Any]) -> None:
        result = await asyncio.wait_for(harness.layer.receive(RESULTS), 20)
        assert harness.schema.problem(result) is None
        assert (result["type"], result["id"], result["permanent"]) == ("email.failed", "bad", True)

    async def observe_refusal(self, harness: Harness) -> None:
        # Spooled mail the full layer refused is handed off once there is room
        # (an email.receive may come twice: it is resent until acknowledged).
        ids: set[str] = set()
        while len(ids) < self.sent:
            ids.add((await harness.receive())[1]["id"])


class TestEmailConformance(ConformanceSuite):
    driver_class = EmailDriver
