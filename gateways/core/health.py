"""The optional HTTP endpoint: ``/healthz`` and Prometheus ``/metrics``, on aiohttp."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable

from gateways.core.metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from aiohttp import web


class HealthServer:
    """An HTTP server for two GET paths.

    ``/healthz`` answers 200 when healthy and 503 when not, with the JSON
    ``{"healthy": ..., **details}``; ``/metrics`` runs the scrape-time
    collectors and answers the exposition text. Any other path is 404, any
    other method 405.

    Args:
        metrics: the registry ``/metrics`` renders.
        status: returns ``(healthy, details)`` for ``/healthz`` (503 when not healthy).
    """

    def __init__(self, metrics: Metrics, status: Callable[[], tuple[bool, dict]]) -> None:
        self.metrics = metrics
        self.status = status
        self.runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``."""
        # Imported here: a daemon without the endpoint does not pay aiohttp's import.
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        # No access log: a scraper every few seconds would drown the daemon's own lines.
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()

    async def close(self) -> None:
        """Stop listening."""
        if self.runner:
            await self.runner.cleanup()
            self.runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        from aiohttp import web

        healthy, details = self.status()
        return web.Response(status=200 if healthy else 503, headers={"Content-Type": "application/json"},
                            body=json.dumps({"healthy": healthy, **details}).encode())

    async def _metrics(self, _request: web.Request) -> web.Response:
        from aiohttp import web

        body = await self.metrics.scrape()
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})
