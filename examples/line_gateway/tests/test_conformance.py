"""The conformance kit against the line gateway: a driver and nothing else."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateways.conformance import ConformanceSuite, Driver, Harness

pytestmark = pytest.mark.e2e


class LineDriver(Driver):
    """A line client: one connection, one line per event."""

    protocol = "line"

    def __init__(self) -> None:
        self.port = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.one_at_a_time = asyncio.Lock()
        #: The gateway's answer to each line: OK, or why it did not take it.
        self.answers: list[str] = []

    def section(self, harness: Harness) -> dict[str, Any]:
        self.port = harness.free_port()
        return {"listen": f"127.0.0.1:{self.port}"}

    async def teardown(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def ready(self, harness: Harness) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def produce(self, harness: Harness) -> None:
        assert self.writer is not None
        async with self.one_at_a_time:  # each line's answer is the next line read
            self.writer.write(b"hello\n")
            await self.writer.drain()
            self.answers.append(await self._line_starting(""))

    def reply(self, received: dict[str, Any], channel: str) -> tuple[str, dict[str, Any]]:
        return received["reply_channel"], {"type": "line.send", "text": f"echo: {received['text']}"}

    async def _line_starting(self, prefix: str) -> str:
        assert self.reader is not None
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 20)).decode()
            assert line, f"the connection closed before a line starting {prefix!r}"
            if line.startswith(prefix):
                return line.rstrip("\n")

    async def observe(self, harness: Harness, reply: dict[str, Any]) -> None:
        assert await self._line_starting("echo") == reply["text"]

    async def observe_invalid(self, harness: Harness, invalid: dict[str, Any]) -> None:
        await self._line_starting("ERR invalid reply: line.send")

    async def observe_refusal(self, harness: Harness) -> None:
        await harness.wait_until(lambda: "ERR busy" in self.answers, 20, "a line answered ERR busy")
        assert self.answers[0] == "OK"


class TestLineConformance(ConformanceSuite):
    driver_class = LineDriver
