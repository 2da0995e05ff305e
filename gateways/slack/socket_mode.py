"""The Socket Mode link, on slack_sdk's aiohttp client.

slack_sdk connects, pings, reconnects when the link drops or goes silent,
and follows ``disconnect`` envelopes (``refresh_requested``,
``too_many_websockets``...) to a fresh URL. This module adds what the gateway
needs on top: backoff when ``apps.connections.open`` fails, every URL asked
for through ``slack.api_url``, and the envelopes handed to the gateway with
an acknowledgement sent only when the gateway says so.

slack_sdk runs each envelope's listeners as a task of its own; the gateway
takes its ordering slot synchronously at the start of that task (see
:class:`gateways.slack.daemon.Serializer`), before anything can interleave.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

import aiohttp
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from gateways.core.backoff import Backoff
from gateways.core.metrics import Metrics
from gateways.slack.protocol import ack_frame
from gateways.slack.webapi import WebApi

#: What the gateway answers an envelope with: ``(ack, payload)``.
EnvelopeHandler = Callable[[dict[str, Any]], Awaitable[tuple[bool, dict[str, Any] | None]]]

ENVELOPE_TYPES = ("events_api", "slash_commands", "interactive")


class _Client(SocketModeClient):
    """slack_sdk's client, asking for URLs through the gateway's Web API caller
    with backoff instead of a fixed delay."""

    def __init__(self, webapi: WebApi, app_token: str, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(app_token=app_token, **kwargs)
        self.webapi = webapi
        self.metrics = metrics
        self.backoff = Backoff(initial=0.5, maximum=30.0)

    async def issue_new_wss_url(self) -> str:
        while True:
            result = await self.webapi.call("apps.connections.open", token=self.app_token)
            url = (result.body or {}).get("url") if result.ok else None
            if isinstance(url, str) and url:
                self.backoff.reset()
                return url
            self.metrics.inc("slack_connect_failures_total", "apps.connections.open failures",
                             error=str(result.error))
            delay = self.backoff.next_delay()
            self.logger.error("apps.connections.open failed: %s; retrying in %.1fs", result.error, delay)
            if self.closed:
                raise ConnectionError("client closed")
            await asyncio.sleep(delay)


class SocketModeLink:
    """One Socket Mode connection that hands envelopes to ``handler``.

    Args:
        webapi: the Web API caller (``apps.connections.open`` goes through it).
        app_token: the app-level token.
        handler: called with each ``events_api``/``slash_commands``/``interactive``
            envelope; returns whether to ack and the ack's payload.
        ping_interval: seconds between pings; the link counts as dead after 4 unanswered.
        metrics: where connections and envelopes are counted.
    """

    def __init__(self, webapi: WebApi, app_token: str, handler: EnvelopeHandler,
                 ping_interval: float, metrics: Metrics) -> None:
        self.webapi = webapi
        self.app_token = app_token
        self.handler = handler
        self.ping_interval = ping_interval
        self.metrics = metrics
        self.log = logging.getLogger("gateway.slack.socket")
        self.client: _Client | None = None
        self.accepting = True
        self.hellos = 0
        self._watchdog: asyncio.Future | None = None

    async def start(self) -> None:
        """Connect (retrying in the background until Slack answers)."""
        self.client = _Client(
            self.webapi, self.app_token, self.metrics,
            logger=self.log,
            web_client=AsyncWebClient(token=self.app_token, base_url=self.webapi.base_url),
            ping_interval=self.ping_interval,
            on_message_listeners=[self._on_frame],
        )
        self.client.message_listeners.append(self._on_message)
        self._watchdog = asyncio.ensure_future(self._watch())
        await self.client.connect()

    async def _watch(self) -> None:
        """Make a link that stays down ask for a fresh URL.

        slack_sdk retries a failed connect with the same URL for as long as it
        fails; Slack's URLs are short-lived, so one that failed twice in a row
        is dropped and the next attempt asks apps.connections.open again.
        """
        down = 0
        while self.client is not None and not self.client.closed:
            await asyncio.sleep(self.ping_interval)
            down = 0 if self.connected else down + 1
            if down >= 2 and self.client.wss_uri is not None:
                self.log.info("Socket Mode link down for %d checks; asking for a fresh URL", down)
                self.client.wss_uri = None
                down = 0

    @property
    def connected(self) -> bool:
        """Whether a WebSocket session is open right now."""
        client = self.client
        return bool(client and client.current_session is not None and not client.current_session.closed
                    and not client.closed)

    async def close(self) -> None:
        """Close the link; Slack redelivers what was not acked to other connections."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.client is not None:
            await self.client.close()

    async def _on_frame(self, frame: aiohttp.WSMessage) -> None:
        # Only to log disconnect envelopes: slack_sdk follows them without telling listeners.
        if isinstance(frame.data, str) and '"disconnect"' in frame.data:
            try:
                data = json.loads(frame.data)
            except ValueError:
                return
            if data.get("type") == "disconnect":
                self.metrics.inc("slack_disconnects_total", "disconnect envelopes", reason=str(data.get("reason")))
                self.log.info("Slack asked to reconnect (%s)", data.get("reason"))

    async def _on_message(self, client: Any, message: dict[str, Any], raw: str | None) -> None:
        mtype = message.get("type")
        if mtype == "hello":
            self.hellos += 1
            self.metrics.inc("slack_connections_total", "Socket Mode sessions opened")
            self.log.info("Socket Mode connected (%s connections so far)", self.hellos)
            return
        if mtype not in ENVELOPE_TYPES:
            if mtype is None:
                self.log.warning("Socket Mode frame that is not a JSON envelope: %.200r", raw)
            else:
                self.log.debug("ignoring Socket Mode frame of type %r", mtype)
            return
        envelope_id = message.get("envelope_id")
        if not isinstance(envelope_id, str) or not envelope_id:
            self.log.warning("%s envelope without envelope_id ignored", mtype)
            return
        if not self.accepting:
            return  # not acked: Slack redelivers it to another connection
        ack, payload = await self.handler(message)
        if not ack:
            return
        try:
            await client.send_socket_mode_response(ack_frame(envelope_id, payload))
        except Exception as exc:  # the link dropped: Slack will retry the envelope
            self.metrics.inc("slack_ack_failures_total", "acks that could not be sent")
            self.log.warning("could not ack envelope %s: %s", envelope_id, exc)
