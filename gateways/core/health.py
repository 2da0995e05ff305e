"""The optional HTTP endpoint: ``/healthz`` and Prometheus ``/metrics``."""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable

from gateways.core.metrics import Metrics


class HealthServer:
    """A minimal HTTP/1.1 server for two GET paths.

    Args:
        metrics: the registry ``/metrics`` renders.
        status: returns ``(healthy, details)`` for ``/healthz`` (503 when not healthy).
        refresh: awaited before ``/metrics`` renders, for gauges read at scrape time.
    """

    def __init__(self, metrics: Metrics, status: Callable[[], tuple[bool, dict]],
                 refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self.metrics = metrics
        self.status = status
        self.refresh = refresh
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``."""
        self.server = await asyncio.start_server(self._serve, host, port)

    async def close(self) -> None:
        """Stop listening."""
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype = "200 OK", "text/plain; version=0.0.4"
                if self.refresh is not None:
                    await self.refresh()
                body = self.metrics.render().encode()
            elif path == "/healthz":
                healthy, details = self.status()
                status = "200 OK" if healthy else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps({"healthy": healthy, **details}).encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
