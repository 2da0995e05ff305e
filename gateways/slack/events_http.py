"""The Events API HTTP listener (aiohttp): events, slash commands, interactivity.

Every request's signature is checked against the signing secret and its
timestamp against a replay window before anything is parsed; a bad one gets
401 and a log line. ``url_verification`` is answered with its challenge. The
answer to a delivery is Slack's ack: 200 after the hand-off (with the
consumer's payload for commands, view submissions and options requests, when
one came within ``ack_timeout``), 503 when the layer did not take it, so that
Slack retries.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from aiohttp import web

from gateways.core.metrics import Metrics
from gateways.slack.protocol import Ignored, Inbound, signature_problem, translate_command, \
    translate_event_callback, translate_interactive

#: Takes a translated delivery and a deadline (monotonic); returns (ack, payload).
DeliveryHandler = Callable[[Inbound, float], Awaitable[tuple[bool, dict[str, Any] | None]]]

#: Slack waits 3 s for an answer; keep a margin for the network.
SLACK_DEADLINE = 2.8


class EventsListener:
    """The HTTP server Slack posts to.

    Args:
        path: the request URL's path.
        secret: the signing secret.
        window: seconds a timestamp may be off.
        deliver: hands a translated delivery to the gateway.
        identity: returns the bot's identity, or None while it is not known yet.
        metrics: where requests are counted.
    """

    def __init__(self, path: str, secret: str, window: float, deliver: DeliveryHandler,
                 identity: Callable[[], Any], metrics: Metrics) -> None:
        self.path = path
        self.secret = secret
        self.window = window
        self.deliver = deliver
        self.identity = identity
        self.metrics = metrics
        self.accepting = True
        self.log = logging.getLogger("gateway.slack.events")
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``."""
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post(self.path, self._request)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.log.info("Events API listening on http://%s:%s%s", host, port, self.path)

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    def _refuse(self, status: int, reason: str, text: str) -> web.Response:
        self.metrics.inc("slack_http_refused_total", "Events API requests refused", reason=reason)
        return web.Response(status=status, text=text + "\n")

    async def _request(self, request: web.Request) -> web.Response:
        deadline = time.monotonic() + SLACK_DEADLINE
        body = await request.read()
        problem = signature_problem(
            self.secret, body, request.headers.get("X-Slack-Request-Timestamp"),
            request.headers.get("X-Slack-Signature"), time.time(), self.window,
        )
        if problem:
            self.log.warning("refused request from %s: %s", request.remote, problem)
            return self._refuse(401, "signature", f"invalid request signature: {problem}")
        if not self.accepting:
            return self._refuse(503, "stopping", "gateway is stopping")
        ctype = request.content_type
        try:
            if ctype == "application/json":
                data = json.loads(body)
                if not isinstance(data, dict):
                    raise ValueError("body is not a JSON object")
                if data.get("type") == "url_verification":
                    return web.json_response({"challenge": data.get("challenge")})
                if data.get("type") == "app_rate_limited":
                    self.log.warning("Slack dropped events: app_rate_limited (minute %s)",
                                     data.get("minute_rate_limited"))
                    return web.Response(text="")
                translated = self._event(data, request)
            elif ctype == "application/x-www-form-urlencoded":
                form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
                if "payload" in form:
                    payload = json.loads(form["payload"])
                    if not isinstance(payload, dict):
                        raise ValueError("payload is not a JSON object")
                    translated = translate_interactive(payload, uuid.uuid4().hex)
                else:
                    translated = translate_command(form, uuid.uuid4().hex)
            else:
                return self._refuse(415, "content_type", f"unsupported content type {ctype!r}")
        except (ValueError, UnicodeDecodeError) as exc:
            self.log.warning("refused malformed request: %s", exc)
            return self._refuse(400, "malformed", f"malformed request: {exc}")
        if translated is None:
            return self._refuse(503, "starting", "gateway is starting (bot identity not known yet)")
        if isinstance(translated, Ignored):
            self.metrics.inc("slack_ignored_total", "deliveries producing no message", reason=translated.reason)
            self.log.debug("ignored: %s", translated.reason)
            return web.Response(text="")
        ack, payload = await self.deliver(translated, deadline)
        if not ack:
            return self._refuse(503, "handoff", "the channel layer did not take the event; retry")
        if payload:
            return web.json_response(payload)
        return web.Response(text="")

    def _event(self, data: dict[str, Any], request: web.Request) -> Inbound | Ignored | None:
        identity = self.identity()
        if identity is None:
            return None
        try:
            attempt = int(request.headers.get("X-Slack-Retry-Num", "0"))
        except ValueError:
            attempt = 0
        return translate_event_callback(data, identity, attempt)
