"""A local stand-in for Slack that speaks its documented wire formats.

- Web API over HTTP (``POST /api/<method>``, JSON or form bodies, the token
  as ``Authorization: Bearer`` or a ``token`` field): ``auth.test``,
  ``apps.connections.open``, ``chat.postMessage``, ``chat.update``,
  ``chat.delete``, ``chat.postEphemeral``, ``reactions.add``,
  ``reactions.remove``; ``{"ok": false, "error": ...}`` bodies for bad tokens,
  missing arguments and unknown methods; 429 with ``Retry-After`` when a test
  asks for rate limiting.
- Socket Mode over WebSocket (the URL ``apps.connections.open`` hands out):
  ``hello`` on connect, ``events_api``/``slash_commands``/``interactive``
  envelopes (with ``retry_attempt``/``retry_reason`` on redeliveries),
  ``disconnect`` envelopes, and the acks the app sends back.
- ``response_url`` endpoints (``POST /response/<id>``).
- Signed Events API requests to an app (:func:`post_signed`).

It runs in a thread with its own event loop so that synchronous tests, the
bench and asyncio tests can all drive it. Everything it receives is recorded
with ``time.perf_counter()`` stamps.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode

from aiohttp import WSMsgType, web

from gateways.slack.protocol import sign

TEAM = "T0STANDIN"
BOT_USER = "U0BOT"
BOT_ID = "B0BOT"
HUMAN = "U0HUMAN"


@dataclass
class Call:
    """One Web API call or response_url post the stand-in received."""

    method: str
    params: dict[str, Any]
    status: int
    response: dict[str, Any]
    at: float = field(default_factory=time.perf_counter)


@dataclass
class Ack:
    """One Socket Mode acknowledgement."""

    envelope_id: str
    payload: dict[str, Any] | None
    at: float = field(default_factory=time.perf_counter)


class SlackStandIn:
    """The fake Slack server.

    Args:
        bot_token: the token Web API methods accept.
        app_token: the token ``apps.connections.open`` accepts.
    """

    def __init__(self, bot_token: str = "xoxb-standin", app_token: str = "xapp-standin") -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.port = 0
        self.calls: list[Call] = []
        self.acks: dict[str, Ack] = {}
        self.sent: dict[str, float] = {}  # envelope id -> when it was sent
        self.responses: list[Call] = []
        self.connections_opened = 0
        self.hellos = 0
        self._cond = threading.Condition()
        self._sockets: list[web.WebSocketResponse] = []
        self._tickets: set[str] = set()
        self._refuse_links = 0
        self.links_refused = 0
        self._rate_limits: dict[str, list[float]] = {}
        self._failures: dict[str, list[str]] = {}
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._reactions: set[tuple[str, str, str]] = set()
        self._ts = itertools.count(1)
        self._rr = itertools.count()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> "SlackStandIn":
        """Start serving on a free port of 127.0.0.1."""
        started = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(self._serve())
            started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._shutdown())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="slack-standin", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the Slack stand-in did not start")
        return self

    def stop(self) -> None:
        """Close every socket and stop the server."""
        if self.loop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self._thread = None

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/link/", self._link)
        app.router.add_post("/response/{id}", self._response_url)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _shutdown(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        """The base URL to configure as ``slack.api_url``."""
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str = "") -> str:
        """A response_url that records what is posted to it."""
        return f"http://127.0.0.1:{self.port}/response/{name or uuid.uuid4().hex}"

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- test controls ----------------------------------------------------------

    def rate_limit(self, method: str, times: int, retry_after: float = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with 429 and ``Retry-After``."""
        with self._cond:
            self._rate_limits[method] = [retry_after] * times

    def fail_next(self, method: str, error: str, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with ``{"ok": false, "error": error}``."""
        with self._cond:
            self._failures[method] = [error] * times

    def refuse_links(self, count: int) -> None:
        """Answer the next ``count`` WebSocket upgrades with 503; like Slack's
        short-lived URLs, a refused URL cannot be used again."""
        with self._cond:
            self._refuse_links = count

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        """Block until ``predicate()`` (checked on every change) is truthy; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"stand-in: no {what} within {timeout}s")
                self._cond.wait(min(left, 0.5))

    def calls_of(self, method: str, **params: Any) -> list[Call]:
        """Calls of ``method`` whose params include ``params``."""
        with self._cond:
            return [c for c in self.calls if c.method == method
                    and all(c.params.get(k) == v for k, v in params.items())]

    def wait_call(self, method: str, timeout: float = 30.0, status: int | None = 200, **params: Any) -> Call:
        """The first call of ``method`` with ``params`` answered with ``status``
        (any status when None), waiting for it."""

        def found_calls() -> list[Call]:
            return [c for c in self.calls_of(method, **params) if status is None or c.status == status]

        found = self.wait_for(found_calls, timeout, f"{method} {params}")
        return found[0]

    def wait_ack(self, envelope_id: str, timeout: float = 30.0) -> Ack:
        """The ack of ``envelope_id``, waiting for it."""
        return self.wait_for(lambda: self.acks.get(envelope_id), timeout, f"ack of {envelope_id}")

    def wait_connections(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``count`` Socket Mode sessions are open."""
        self.wait_for(lambda: len(self._sockets) >= count, timeout, f"{count} socket connection(s)")

    def wait_hellos(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` hellos were sent in all (counts reconnects)."""
        self.wait_for(lambda: self.hellos >= count, timeout, f"{count} hellos")

    @property
    def open_sockets(self) -> int:
        """Socket Mode sessions open now."""
        with self._cond:
            return len(self._sockets)

    def send_envelope(self, kind: str, payload: dict[str, Any], envelope_id: str | None = None,
                      retry_attempt: int = 0, retry_reason: str = "", socket: int | None = None) -> str:
        """Send an envelope to one open socket (round robin unless ``socket`` says which).

        Args:
            kind: ``events_api``, ``slash_commands`` or ``interactive``.
            payload: the envelope's payload.
            envelope_id: the id (fresh by default).
            retry_attempt: Slack's redelivery counter.
            retry_reason: e.g. ``timeout``.
            socket: the index of the socket to use.
        """
        envelope_id = envelope_id or uuid.uuid4().hex
        accepts = kind == "slash_commands" or (
            kind == "interactive" and payload.get("type") in ("view_submission", "block_suggestion"))
        frame = {"envelope_id": envelope_id, "payload": payload, "type": kind,
                 "accepts_response_payload": accepts}
        if kind == "events_api":
            frame["retry_attempt"] = retry_attempt
            frame["retry_reason"] = retry_reason
        self.send_frame(frame, socket)
        return envelope_id

    def send_frame(self, frame: dict[str, Any], socket: int | None = None) -> None:
        """Send any JSON frame to one open socket."""
        text = json.dumps(frame)

        async def send() -> None:
            if not self._sockets:
                raise ConnectionError("no Socket Mode connection is open")
            index = socket if socket is not None else next(self._rr) % len(self._sockets)
            ws = self._sockets[index]
            if "envelope_id" in frame:
                with self._cond:
                    self.sent[frame["envelope_id"]] = time.perf_counter()
            await ws.send_str(text)

        self._run(send())

    def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Send a ``disconnect`` envelope to every open socket."""
        for index in range(self.open_sockets):
            self.send_frame({"type": "disconnect", "reason": reason,
                             "debug_info": {"host": "standin"}}, socket=index)

    def drop_sockets(self) -> None:
        """Cut every Socket Mode connection without a closing handshake."""

        async def drop() -> None:
            for ws in list(self._sockets):
                transport = ws._req.transport if ws._req is not None else None  # type: ignore[union-attr]
                if transport is not None:
                    transport.abort()

        self._run(drop())

    # -- Web API ------------------------------------------------------------------

    def _next_ts(self) -> str:
        return f"{1700000000 + next(self._ts)}.{next(self._ts):06d}"

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        raw = await request.read()
        if request.content_type == "application/json":
            try:
                params = json.loads(raw or b"{}")
            except ValueError:
                params = {}
                return self._answer(method, {}, {"ok": False, "error": "invalid_json"})
        else:
            params = dict(parse_qsl(raw.decode(), keep_blank_values=True))
            for key in ("blocks", "attachments"):
                if isinstance(params.get(key), str):
                    params[key] = json.loads(params[key])
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else params.pop("token", None)
        with self._cond:
            failures = self._failures.get(method)
            failure = failures.pop(0) if failures else None
            limits = self._rate_limits.get(method) if failure is None else None
            retry_after = limits.pop(0) if limits else None
        if failure is not None:
            return self._answer(method, params, {"ok": False, "error": failure})
        if retry_after is not None:
            return self._answer(method, params, {"ok": False, "error": "ratelimited"}, status=429,
                                headers={"Retry-After": f"{retry_after:g}"})
        if not token:
            return self._answer(method, params, {"ok": False, "error": "not_authed"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return self._answer(method, params, {"ok": False, "error": "unknown_method"})
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            wrong_type = token in (self.app_token, self.bot_token)
            return self._answer(method, params, {"ok": False,
                                                 "error": "not_allowed_token_type" if wrong_type else "invalid_auth"})
        return self._answer(method, params, handler(params))

    def _answer(self, method: str, params: dict[str, Any], body: dict[str, Any], status: int = 200,
                headers: dict[str, str] | None = None) -> web.Response:
        with self._cond:
            self.calls.append(Call(method, params, status, body))
            self._cond.notify_all()
        return web.json_response(body, status=status, headers=headers)

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://standin.slack.com/", "team": "Stand-in", "user": "gatewaybot",
                "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID, "is_enterprise_install": False}

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        with self._cond:
            self._tickets.add(ticket)
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id=A0STANDIN"}

    @staticmethod
    def _channel_problem(params: dict[str, Any]) -> dict[str, Any] | None:
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not isinstance(channel, str) or channel[0] not in "CDG":
            return {"ok": False, "error": "channel_not_found"}
        return None

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        problem = self._channel_problem(params)
        if problem:
            return problem
        if not params.get("text") and not params.get("blocks") and not params.get("attachments"):
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        message = {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "text": params.get("text", ""),
                   "ts": ts, "team": TEAM}
        if params.get("thread_ts"):
            message["thread_ts"] = params["thread_ts"]
        with self._cond:
            self._messages[(params["channel"], ts)] = message
        return {"ok": True, "channel": params["channel"], "ts": ts, "message": message}

    def _m_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        problem = self._channel_problem(params)
        if problem:
            return problem
        if not params.get("user"):
            return {"ok": False, "error": "user_not_in_channel"}
        if not params.get("text") and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _own_message(self, params: dict[str, Any]) -> dict[str, Any] | None:
        with self._cond:
            return self._messages.get((params.get("channel"), params.get("ts")))

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        problem = self._channel_problem(params)
        if problem:
            return problem
        message = self._own_message(params)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        message["text"] = params.get("text", message["text"])
        return {"ok": True, "channel": params["channel"], "ts": params["ts"], "text": message["text"]}

    def _m_chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        problem = self._channel_problem(params)
        if problem:
            return problem
        if self._own_message(params) is None:
            return {"ok": False, "error": "message_not_found"}
        with self._cond:
            del self._messages[(params["channel"], params["ts"])]
        return {"ok": True, "channel": params["channel"], "ts": params["ts"]}

    def _m_reactions_add(self, params: dict[str, Any]) -> dict[str, Any]:
        problem = self._channel_problem(params)
        if problem:
            return problem
        if not params.get("name") or not params.get("timestamp"):
            return {"ok": False, "error": "invalid_arguments"}
        key = (params["channel"], params["timestamp"], params["name"])
        with self._cond:
            if key in self._reactions:
                return {"ok": False, "error": "already_reacted"}
            self._reactions.add(key)
        return {"ok": True}

    def _m_reactions_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (params.get("channel"), params.get("timestamp"), params.get("name"))
        with self._cond:
            if key not in self._reactions:
                return {"ok": False, "error": "no_reaction"}
            self._reactions.discard(key)  # type: ignore[arg-type]
        return {"ok": True}

    # -- response_url ----------------------------------------------------------------

    async def _response_url(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        with self._cond:
            self.responses.append(Call("response_url", {"id": request.match_info["id"], **body}, 200, {}))
            self._cond.notify_all()
        return web.Response(text="ok")

    # -- Socket Mode ----------------------------------------------------------------

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._cond:
            known = ticket in self._tickets
            if known and self._refuse_links > 0:
                self._refuse_links -= 1
                self.links_refused += 1
                self._tickets.discard(ticket)
                self._cond.notify_all()
                return web.Response(status=503, text="service unavailable")
        if not known:
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        with self._cond:
            self._sockets.append(ws)
            self.connections_opened += 1
            count = len(self._sockets)
        await ws.send_json({"type": "hello", "num_connections": count,
                            "debug_info": {"host": "standin", "build_number": 1,
                                           "approximate_connection_time": 18060},
                            "connection_info": {"app_id": "A0STANDIN"}})
        with self._cond:
            self.hellos += 1
            self._cond.notify_all()
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(frame.data)
                except ValueError:
                    continue
                envelope_id = data.get("envelope_id")
                if isinstance(envelope_id, str):
                    with self._cond:
                        self.acks.setdefault(envelope_id, Ack(envelope_id, data.get("payload")))
                        self._cond.notify_all()
        finally:
            with self._cond:
                if ws in self._sockets:
                    self._sockets.remove(ws)
                self._cond.notify_all()
        return ws


# --------------------------------------------------------------------------
# Payloads in Slack's shapes.


def event_callback(event: dict[str, Any], event_id: str | None = None, team: str = TEAM) -> dict[str, Any]:
    """An Events API ``event_callback`` body around ``event``."""
    return {
        "token": "legacy-verification-token",
        "team_id": team,
        "api_app_id": "A0STANDIN",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": team, "user_id": BOT_USER, "is_bot": True}],
        "event_context": uuid.uuid4().hex,
    }


def message_event(channel: str, text: str, user: str = HUMAN, ts: str | None = None, **extra: Any) -> dict[str, Any]:
    """A ``message`` event posted by ``user``."""
    ts = ts or f"{time.time():.6f}"
    return {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
            "event_ts": ts, "channel_type": "channel", "team": TEAM, **extra}


def command_payload(command: str, text: str, channel: str, user: str = HUMAN,
                    response_url: str = "https://hooks.slack.com/commands/T0/1/x") -> dict[str, Any]:
    """The fields of a slash command invocation."""
    return {"token": "legacy-verification-token", "team_id": TEAM, "team_domain": "standin",
            "channel_id": channel, "channel_name": "general", "user_id": user, "user_name": "human",
            "command": command, "text": text, "api_app_id": "A0STANDIN", "is_enterprise_install": "false",
            "response_url": response_url, "trigger_id": f"{int(time.time())}.1.{uuid.uuid4().hex[:8]}"}


def block_actions_payload(channel: str, action_id: str, value: str, response_url: str,
                          message_ts: str = "1700000000.000100", user: str = HUMAN) -> dict[str, Any]:
    """A ``block_actions`` interactive payload (a button click)."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": "human", "team_id": TEAM},
        "api_app_id": "A0STANDIN", "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
        "trigger_id": f"{int(time.time())}.1.{uuid.uuid4().hex[:8]}",
        "team": {"id": TEAM, "domain": "standin"},
        "channel": {"id": channel, "name": "general"},
        "message": {"type": "message", "ts": message_ts, "text": "pick one", "user": BOT_USER},
        "response_url": response_url,
        "actions": [{"action_id": action_id, "block_id": "b1", "type": "button", "value": value,
                     "text": {"type": "plain_text", "text": value}, "action_ts": f"{time.time():.6f}"}],
    }


def view_submission_payload(callback_id: str, values: dict[str, Any], user: str = HUMAN) -> dict[str, Any]:
    """A ``view_submission`` payload of a modal with ``values`` in ``state``."""
    return {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "standin"},
        "user": {"id": user, "username": "human", "team_id": TEAM},
        "api_app_id": "A0STANDIN", "token": "legacy-verification-token",
        "trigger_id": f"{int(time.time())}.1.{uuid.uuid4().hex[:8]}",
        "view": {"id": "V0001", "type": "modal", "callback_id": callback_id, "team_id": TEAM,
                 "state": {"values": values}, "hash": "1.abc"},
        "response_urls": [],
    }


def post_signed(url: str, body: bytes, secret: str, content_type: str = "application/json",
                timestamp: str | None = None, signature: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """POST ``body`` to an app's Events API URL signed the way Slack signs it.

    ``timestamp``/``signature`` override the correct values, to send bad ones.
    Returns (status, body).
    """
    timestamp = timestamp if timestamp is not None else str(int(time.time()))
    signature = signature if signature is not None else sign(secret, timestamp, body)
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": content_type, "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature, "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def form_body(fields: dict[str, Any]) -> bytes:
    """A form-encoded body, as Slack posts slash commands and interactivity."""
    return urlencode(fields).encode()
