"""The line gateway's I/O: an asyncio TCP server around :mod:`line_gateway.protocol`."""

from __future__ import annotations

import asyncio
from typing import Any

from gateways.core.gateway import Gateway
from gateways.core.runtime import HandoffError
from line_gateway import protocol
from line_gateway.config import LineSection


class LineGateway(Gateway, protocol="line", section_class=LineSection):
    """Serves line clients: each line in is handed to the layer, each
    ``line.send`` on a connection's reply channel is written back."""

    def __init__(self, runtime: Any, section: LineSection) -> None:
        super().__init__(runtime, section)
        self.server: asyncio.Server | None = None
        #: reply channel -> the connection's writer
        self.connections: dict[str, asyncio.StreamWriter] = {}
        self._reading: set[asyncio.Task] = set()

    def uses_process_channel(self) -> bool:
        """Consumers answer on each connection's reply channel."""
        return True

    async def start(self) -> None:
        """Listen on ``listen``."""
        host, _, port = self.section.listen.rpartition(":")
        self.server = await asyncio.start_server(self._serve, host, int(port))

    async def stop_accepting(self) -> None:
        """Take no new connection; the lines being handed off finish."""
        if self.server:
            self.server.close()

    async def drain(self) -> None:
        """Wait for the lines being handed off (the core bounds the wait)."""
        await asyncio.gather(*self._reading, return_exceptions=True)

    async def close(self) -> None:
        """Close every connection."""
        for writer in list(self.connections.values()):
            writer.close()
        self.connections.clear()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while listening."""
        return self.server is not None and self.server.is_serving(), {"connections": len(self.connections)}

    async def handle(self, channel: str, message: dict[str, Any]) -> None:
        """Write a ``line.send`` to the connection of ``channel``."""
        self._write(channel, protocol.send_bytes(message))

    async def answer_invalid(self, channel: str, message: Any, problem: str) -> None:
        """Tell the client its consumer's message was invalid; the connection stays."""
        self._write(channel, protocol.invalid_answer(problem))

    def _write(self, channel: str, data: bytes) -> None:
        writer = self.connections.get(channel)
        if writer is not None and not writer.is_closing():
            writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply_channel = await self.runtime.new_channel()
        self.connections[reply_channel] = writer
        decoder = protocol.LineDecoder(self.section.max_line_length)
        try:
            while not self.runtime.stopping.is_set():
                data = await reader.read(65536)
                if not data:
                    break
                # A line being handed off finishes even when the daemon stops meanwhile.
                handoff = asyncio.ensure_future(self._hand_off(decoder.feed(data), reply_channel, writer))
                self._reading.add(handoff)
                handoff.add_done_callback(self._reading.discard)
                await asyncio.shield(handoff)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.connections.pop(reply_channel, None)
            writer.close()

    async def _hand_off(self, lines: list[str | bytes], reply_channel: str, writer: asyncio.StreamWriter) -> None:
        for line in lines:
            if isinstance(line, bytes):
                writer.write(line)
                continue
            try:
                await self.runtime.send(self.section.channel, protocol.receive_message(line, reply_channel))
            except HandoffError:
                writer.write(protocol.BUSY)
            else:
                writer.write(protocol.OK)
