"""A local stand-in for Slack that speaks its documented wire formats.

Point a ``gateway slack`` at it to develop without a Slack workspace::

    python -m consumers.testing.slack_standin            # http://127.0.0.1:8790
    SLACK_API_URL=http://127.0.0.1:8790/api/ SLACK_APP_TOKEN=xapp-standin \\
        SLACK_BOT_TOKEN=xoxb-standin gateway up --config config/demo.yaml
    curl -d '{"channel": "C0DEMO", "text": "echo hi"}' http://127.0.0.1:8790/inject/message

What it serves:

- Web API over HTTP (``POST /api/<method>``, JSON or form bodies, the token
  as ``Authorization: Bearer`` or a ``token`` field): ``auth.test``,
  ``apps.connections.open``, ``chat.postMessage``, ``chat.update``,
  ``chat.delete``, ``chat.postEphemeral``, ``reactions.add``,
  ``reactions.remove``; ``{"ok": false, "error": ...}`` bodies for bad tokens,
  missing arguments and unknown methods; 429 with ``Retry-After`` when a test
  asks for rate limiting. Every call is kept (``GET /calls``) and, from the
  command line, logged one line each.
- Socket Mode over WebSocket (the URL ``apps.connections.open`` hands out):
  ``hello`` on connect, ``events_api``/``slash_commands``/``interactive``
  envelopes (with ``retry_attempt``/``retry_reason`` on redeliveries),
  ``disconnect`` envelopes, and the acks the app sends back (``GET /acks``).
- ``response_url`` endpoints (``POST /response/<id>``, ``GET /responses``).
- Injection into the connected Socket Mode client (``POST /inject/<what>``
  with a JSON body; see :data:`INJECTORS` and ``docs/testing.md``).

Tests drive it from Python (:class:`SlackStandIn`); it runs in a thread with
its own event loop so that synchronous tests, the bench and asyncio tests can
all use it. Everything it receives is recorded with ``time.perf_counter()``
stamps.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

#: Where the command listens unless told otherwise (``--listen``).
DEFAULT_LISTEN = "127.0.0.1:8790"

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
        self.host = "127.0.0.1"
        self.port = 0
        #: Called with one line per Web API call, response_url post and ack (the command prints them).
        self.log: Callable[[str], None] | None = None
        self.calls: list[Call] = []
        self.acks: dict[str, Ack] = {}
        self.sent: dict[str, float] = {}  # envelope id -> when it was sent
        self.responses: list[Call] = []
        self.connections_opened = 0
        self.hellos = 0
        self._cond = threading.Condition()
        self._sockets: list[web.WebSocketResponse] = []
        #: Each open socket's TCP transport (by ``id`` of the socket), to cut it without a close.
        self._transports: dict[int, Any] = {}
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

    def start(self, host: str = "127.0.0.1", port: int = 0) -> "SlackStandIn":
        """Start serving on ``host:port`` (a free port when 0)."""
        started = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            try:
                self.loop.run_until_complete(self._serve(host, port))
            except BaseException as exc:  # the port is taken, say: tell start()
                failed.append(exc)
                started.set()
                self.loop.close()
                return
            started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._shutdown())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="slack-standin", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the Slack stand-in did not start")
        if failed:
            raise failed[0]
        return self

    def stop(self) -> None:
        """Close every socket and stop the server."""
        if self.loop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self._thread = None

    async def _serve(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/link/", self._link)
        app.router.add_post("/response/{id}", self._response_url)
        app.router.add_post("/inject/{what}", self._inject)
        app.router.add_get("/calls", self._get_calls)
        app.router.add_get("/acks", self._get_acks)
        app.router.add_get("/responses", self._get_responses)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.host = host
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        """The base URL to configure as ``slack.api_url``."""
        return f"{self.base_url}/api/"

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the stand-in."""
        return f"http://{self.host}:{self.port}"

    def response_url(self, name: str = "") -> str:
        """A response_url that records what is posted to it."""
        return f"{self.base_url}/response/{name or uuid.uuid4().hex}"

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
        """Send an envelope to one open socket (round robin unless ``socket`` says which);
        return its id. Arguments as in :meth:`envelope`."""
        frame = self.envelope(kind, payload, envelope_id, retry_attempt, retry_reason)
        self.send_frame(frame, socket)
        return frame["envelope_id"]

    @staticmethod
    def envelope(kind: str, payload: dict[str, Any], envelope_id: str | None = None,
                 retry_attempt: int = 0, retry_reason: str = "") -> dict[str, Any]:
        """A Socket Mode envelope frame.

        Args:
            kind: ``events_api``, ``slash_commands`` or ``interactive``.
            payload: the envelope's payload.
            envelope_id: the id (fresh by default).
            retry_attempt: Slack's redelivery counter.
            retry_reason: e.g. ``timeout``.
        """
        envelope_id = envelope_id or uuid.uuid4().hex
        accepts = kind == "slash_commands" or (
            kind == "interactive" and payload.get("type") in ("view_submission", "block_suggestion"))
        frame = {"envelope_id": envelope_id, "payload": payload, "type": kind,
                 "accepts_response_payload": accepts}
        if kind == "events_api":
            frame["retry_attempt"] = retry_attempt
            frame["retry_reason"] = retry_reason
        return frame

    def send_frame(self, frame: dict[str, Any], socket: int | None = None) -> None:
        """Send any JSON frame to one open socket."""
        self._run(self._send_frame(frame, socket))

    async def _send_frame(self, frame: dict[str, Any], socket: int | None = None) -> None:
        if not self._sockets:
            raise ConnectionError("no Socket Mode connection is open")
        index = socket if socket is not None else next(self._rr) % len(self._sockets)
        ws = self._sockets[index]
        if "envelope_id" in frame:
            with self._cond:
                self.sent[frame["envelope_id"]] = time.perf_counter()
        await ws.send_str(json.dumps(frame))

    def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Send a ``disconnect`` envelope to every open socket."""
        for index in range(self.open_sockets):
            self.send_frame({"type": "disconnect", "reason": reason,
                             "debug_info": {"host": "standin"}}, socket=index)

    def drop_sockets(self) -> None:
        """Cut every Socket Mode connection without a closing handshake."""

        async def drop() -> None:
            for ws in list(self._sockets):
                transport = self._transports.get(id(ws))
                if transport is not None:
                    transport.abort()

        self._run(drop())

    # -- HTTP controls (the command's interface) --------------------------------------

    async def _inject(self, request: web.Request) -> web.Response:
        what = request.match_info["what"]
        build = INJECTORS.get(what)
        if build is None:
            return web.json_response({"ok": False, "error": f"unknown injection {what!r}",
                                      "known": sorted(INJECTORS)}, status=404)
        try:
            fields = await request.json() if request.can_read_body else {}
            if not isinstance(fields, dict):
                raise ValueError("the body must be a JSON object")
            kind, payload = build(fields)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"ok": False, "error": f"bad {what} body: {exc}"}, status=400)
        frame = self.envelope(kind, payload)
        try:
            await self._send_frame(frame)
        except ConnectionError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=409)
        if self.log is not None:
            self.log(f"injected {what} envelope {frame['envelope_id']}")
        return web.json_response({"ok": True, "envelope_id": frame["envelope_id"], "type": kind,
                                  "payload": payload})

    async def _get_calls(self, request: web.Request) -> web.Response:
        method = request.query.get("method")
        with self._cond:
            calls = [vars(c) for c in self.calls if method is None or c.method == method]
        return web.json_response(calls)

    async def _get_acks(self, request: web.Request) -> web.Response:
        with self._cond:
            return web.json_response([vars(a) for a in self.acks.values()])

    async def _get_responses(self, request: web.Request) -> web.Response:
        with self._cond:
            return web.json_response([vars(r) for r in self.responses])

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
        if self.log is not None:
            shown = {k: v for k, v in params.items() if k in ("channel", "text", "ts", "thread_ts", "name", "user")}
            outcome = "ok" if body.get("ok") else f"{status} {body.get('error')}"
            self.log(f"web api  {method} {json.dumps(shown, ensure_ascii=False)} -> {outcome}")
        return web.json_response(body, status=status, headers=headers)

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://standin.slack.com/", "team": "Stand-in", "user": "gatewaybot",
                "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID, "is_enterprise_install": False}

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        with self._cond:
            self._tickets.add(ticket)
        return {"ok": True, "url": f"ws://{self.host}:{self.port}/link/?ticket={ticket}&app_id=A0STANDIN"}

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
        if self.log is not None:
            self.log(f"response_url {request.match_info['id']} {json.dumps(body, ensure_ascii=False)}")
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
            self._transports[id(ws)] = request.transport
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
                    if self.log is not None:
                        self.log(f"ack      {envelope_id} {json.dumps(data.get('payload'))}")
        finally:
            with self._cond:
                if ws in self._sockets:
                    self._sockets.remove(ws)
                self._transports.pop(id(ws), None)
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


# --------------------------------------------------------------------------
# What ``POST /inject/<what>`` sends into the Socket Mode connection.


def _now_ts() -> str:
    return f"{time.time():.6f}"


def _inject_message(f: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    extra = {"thread_ts": f["thread_ts"]} if f.get("thread_ts") else {}
    return "events_api", event_callback(message_event(f["channel"], f["text"], f.get("user", HUMAN),
                                                      f.get("ts"), **extra))


def _inject_mention(f: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ts = f.get("ts") or _now_ts()
    return "events_api", event_callback({"type": "app_mention", "user": f.get("user", HUMAN), "text": f["text"],
                                         "ts": ts, "channel": f["channel"], "event_ts": ts})


def _inject_member(kind: str) -> Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]:
    def build(f: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "events_api", event_callback({"type": kind, "user": f.get("user", HUMAN), "channel": f["channel"],
                                             "channel_type": "C", "team": TEAM, "event_ts": _now_ts()})
    return build


def _inject_reaction(f: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "events_api", event_callback({
        "type": "reaction_removed" if f.get("removed") else "reaction_added", "user": f.get("user", HUMAN),
        "reaction": f["name"], "item_user": f.get("item_user", HUMAN),
        "item": {"type": "message", "channel": f["channel"], "ts": f["ts"]}, "event_ts": _now_ts()})


def _inject_command(f: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    payload = command_payload(f["command"], f.get("text", ""), f["channel"], f.get("user", HUMAN))
    if f.get("response_url"):
        payload["response_url"] = f["response_url"]
    return "slash_commands", payload


def _inject_event(f: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if not isinstance(f.get("type"), str):
        raise ValueError("an Events API event needs a 'type'")
    return "events_api", event_callback(f)


def _inject_envelope(f: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if f.get("type") not in ("events_api", "slash_commands", "interactive") or not isinstance(f.get("payload"), dict):
        raise ValueError("give 'type' (events_api, slash_commands or interactive) and a 'payload' object")
    return f["type"], f["payload"]


#: ``POST /inject/<name>`` -> builder of the envelope from the JSON body (keys in brackets are optional).
INJECTORS: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "message": _inject_message,        # channel, text, [user, ts, thread_ts]
    "mention": _inject_mention,        # channel, text, [user, ts]
    "join": _inject_member("member_joined_channel"),   # channel, [user]
    "leave": _inject_member("member_left_channel"),    # channel, [user]
    "reaction": _inject_reaction,      # channel, ts, name, [user, removed]
    "command": _inject_command,        # command, channel, [text, user, response_url]
    "event": _inject_event,            # any Events API event object (with its "type")
    "envelope": _inject_envelope,      # type (events_api|slash_commands|interactive), payload
}


# --------------------------------------------------------------------------
# The command.


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in until interrupted (``python -m consumers.testing.slack_standin``)."""
    parser = argparse.ArgumentParser(
        prog="python -m consumers.testing.slack_standin",
        description="A local Slack (Web API + Socket Mode) to point `gateway slack` at (slack.api_url).")
    parser.add_argument("--listen", type=_parse_listen, default=_parse_listen(DEFAULT_LISTEN),
                        help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN}; port 0 picks a free one)")
    parser.add_argument("--bot-token", default="xoxb-standin", help="the bot token the Web API accepts")
    parser.add_argument("--app-token", default="xapp-standin", help="the app-level token Socket Mode accepts")
    args = parser.parse_args(argv)
    host, port = args.listen
    standin = SlackStandIn(bot_token=args.bot_token, app_token=args.app_token)
    standin.log = lambda line: print(line, flush=True)
    try:
        standin.start(host, port)
    except OSError as exc:
        print(f"slack stand-in: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"Slack stand-in listening on {standin.base_url}\n"
          f"  point a gateway at it:  SLACK_API_URL={standin.api_url} SLACK_APP_TOKEN={standin.app_token} "
          f"SLACK_BOT_TOKEN={standin.bot_token}\n"
          f"  inject a message:       curl -d '{{\"channel\": \"C0DEMO\", \"text\": \"echo hi\"}}' "
          f"{standin.base_url}/inject/message\n"
          f"  injections:             {', '.join(INJECTORS)} (POST {standin.base_url}/inject/<name>)\n"
          f"  what it received:       GET {standin.base_url}/calls, /acks, /responses", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
