"""The WebSocket gateway's I/O: a ``websockets`` server bridged to the layer.

Each connection gets a reply channel; every reply channel of this process
shares the layer's process channel, which the core receives on in one loop
and hands to :meth:`WebSocketGateway.handle`. Per connection, replies are
carried out in arrival order by a sender task that exists only while replies
are pending, so a slow client never holds up the others and an idle
connection costs no task.
"""

from __future__ import annotations

import asyncio
import collections
import http
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateways.core.config import split_host_port
from gateways.core.gateway import Gateway
from gateways.core.runtime import HandoffError
from gateways.websocket.config import WebSocketSection
from gateways.websocket.instances import Instances
from gateways.websocket.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_LAYER_UNAVAILABLE,
    CLOSE_POLICY,
    CLOSE_SLOW_CLIENT,
    Accept,
    Close,
    Connection,
    ConnectionInfo,
    GroupAdd,
    GroupDiscard,
    Phase,
    Send,
    match_route,
)


@dataclass
class _Live:
    """One connection's protocol state and its I/O."""

    conn: Connection
    answered: asyncio.Future  # Accept or Close, the consumer's answer to connect
    queue: collections.deque = field(default_factory=collections.deque)  # actions, in order
    socket: ServerConnection | None = None
    accept: Accept | None = None
    open: bool = False  # the handshake completed and replies can be sent
    sender: asyncio.Task | None = None
    handler_done: asyncio.Event = field(default_factory=asyncio.Event)
    served: bool = False  # _serve took the connection over (and will clean up after it)


class WebSocketGateway(Gateway, protocol="websocket", section_class=WebSocketSection):
    """``gateway websocket``: WebSocket connections as ``websocket.*`` messages
    (its arguments are :class:`Gateway`'s)."""

    def __init__(self, runtime: Any, section: WebSocketSection) -> None:
        super().__init__(runtime, section)
        self.routes = [r.compiled() for r in section.routes]
        self.live: dict[str, _Live] = {}
        self.server: Server | None = None
        self.metrics = runtime.metrics
        self.instances = Instances(runtime, section.instance_timeout, self._reaped)  # no ghosts if we die
        runtime.on_layer_recovered.append(self._refresh_groups_soon)

    @classmethod
    def consumer_channels(cls, section: WebSocketSection) -> list[str]:
        from protocol_specs.websocket import consumer_channels

        return consumer_channels(section)

    def uses_process_channel(self) -> bool:
        return True

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        host, port = split_host_port(self.section.listen)
        self.server = await serve(
            self._serve,
            host,
            port,
            process_request=self._handshake,
            process_response=self._add_accept_headers,
            select_subprotocol=self._select_subprotocol,
            open_timeout=self.section.accept_timeout + 5,
            # One keepalive loop for all connections (_keepalive_forever) instead of
            # websockets' task per connection: idle connections cost less.
            ping_interval=None,
            ping_timeout=None,
            max_size=self.section.max_message_size,
            compression=None,
            server_header=None,
        )
        self.runtime.spawn(self._refresh_groups_forever(), "refresh groups")
        self.runtime.spawn(self.instances.run(), "instance heartbeat")
        if self.section.ping_interval:
            self.runtime.spawn(self._keepalive_forever(self.section.ping_interval), "keepalive")
        self.log.info("listening on ws://%s", self.section.listen)

    async def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close(close_connections=False)

    async def drain(self) -> None:
        # Reject handshakes waiting for an accept; open connections finish their hand-offs.
        for live in list(self.live.values()):
            if not live.answered.done():
                live.answered.set_result(Close(CLOSE_GOING_AWAY, "server shutting down"))

    async def close(self) -> None:
        for live in list(self.live.values()):
            if live.socket is not None:
                self._queue(live, Close(CLOSE_GOING_AWAY, "server shutting down"))
        waits = [live.handler_done.wait() for live in self.live.values() if live.socket is not None]
        if waits:
            await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=5)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await self.instances.stop()

    def health(self) -> tuple[bool, dict[str, Any]]:
        serving = self.server is not None and self.server.is_serving()
        return serving, {"connections": len(self.live)}

    # -- handshake ---------------------------------------------------------------

    async def _handshake(self, socket: ServerConnection, request: Request) -> Response | None:
        section = self.section
        if self.runtime.stopping.is_set():
            return socket.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n")
        if len(self.live) >= section.max_connections:
            self.metrics.inc("connections_refused_total", "handshakes refused", reason="max_connections")
            return socket.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections.\n")
        origin = request.headers.get("Origin")
        if section.allowed_origins and "*" not in section.allowed_origins and origin not in section.allowed_origins:
            self.metrics.inc("connections_refused_total", "handshakes refused", reason="origin")
            return socket.respond(http.HTTPStatus.FORBIDDEN, f"Origin {origin!r} is not allowed.\n")
        raw_path, _, query = request.path.partition("?")
        path = unquote(raw_path)
        matched = match_route(self.routes, path)
        if matched is None:
            self.metrics.inc("connections_refused_total", "handshakes refused", reason="no_route")
            return socket.respond(http.HTTPStatus.NOT_FOUND, f"No route for {path}.\n")
        route, kwargs = matched
        reply_channel = await self.runtime.new_channel()
        info = ConnectionInfo(
            path=path,
            query_string=query.encode("latin-1"),
            headers=[[k.lower().encode("latin-1"), v.encode("latin-1")] for k, v in request.headers.raw_items()],
            client=list(socket.remote_address[:2]) if socket.remote_address else None,
            server=list(socket.local_address[:2]) if socket.local_address else None,
            subprotocols=[p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol")
                          for p in h.split(",") if p.strip()],
        )
        live = _Live(Connection(info, route, kwargs, reply_channel), asyncio.get_running_loop().create_future())
        self.live[reply_channel] = live
        if route.auto_accept:
            live.answered.set_result(live.conn.accept_automatically()[0])
        await self.instances.opened(live.conn)
        try:
            await self.runtime.send(route.channel, live.conn.connect_message())
            info.headers = []  # only websocket.connect carries them; idle connections stay small
        except HandoffError as exc:
            self._forget(live)
            self.log.warning("refusing %s: %s", path, exc)
            return socket.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Service temporarily unavailable.\n")
        try:
            answer = await asyncio.wait_for(asyncio.shield(live.answered), section.accept_timeout)
        except asyncio.TimeoutError:
            self._forget(live)
            self.metrics.inc("connections_refused_total", "handshakes refused", reason="accept_timeout")
            self.log.warning("no websocket.accept for %s within %ss", path, section.accept_timeout)
            return socket.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "No consumer answered.\n")
        if isinstance(answer, Close):
            self._forget(live)
            self.metrics.inc("connections_refused_total", "handshakes refused", reason="consumer")
            return socket.respond(http.HTTPStatus.FORBIDDEN, "Connection rejected.\n")
        live.accept = answer
        live.socket = socket
        socket.gateway_live = live  # type: ignore[attr-defined]
        # A client that left while we waited for the accept never reaches _serve
        # (websockets drops it without calling the handler): clean up here then.
        # connection_lost_waiter is websockets' own future (tests cover the case).
        lost = getattr(socket, "connection_lost_waiter", None)
        if lost is not None:
            lost.add_done_callback(lambda _lost: self._lost_before_open(live))
        return None

    def _forget(self, live: _Live) -> None:
        """Drop a connection whose handshake failed, and the groups a consumer
        joined it to meanwhile (their group changes were waiting for the open)."""
        conn = live.conn
        conn.phase = Phase.CLOSED
        self.live.pop(conn.reply_channel, None)
        self.instances.closed_soon(conn)
        for group in list(conn.groups):
            self._leave_soon(group, conn.reply_channel)

    def _leave_soon(self, group: str, reply_channel: str) -> None:
        """Remove a connection that is gone from ``group``, without holding up the caller."""
        self.runtime.spawn(self._leave(group, reply_channel), "leave group")

    async def _leave(self, group: str, reply_channel: str) -> None:
        try:
            await self.runtime.group_discard(group, reply_channel)
        except Exception as exc:  # the membership expires with group_expiry
            self.log.warning("leaving group %s failed: %s", group, exc)

    def _reaped(self) -> None:
        """Another instance took this one for dead and told every consumer its connection
        was lost: close them (no second disconnect), so clients reconnect and agree."""
        for live in [live for live in self.live.values() if live.socket is not None]:
            del self.live[live.conn.reply_channel]
            self._close_now(live, 1012, "service restart")

    def _select_subprotocol(self, socket: ServerConnection, offered: Any) -> str | None:
        live: _Live | None = getattr(socket, "gateway_live", None)
        return live.accept.subprotocol if live and live.accept else None

    def _add_accept_headers(self, socket: ServerConnection, request: Request, response: Response) -> Response:
        live: _Live | None = getattr(socket, "gateway_live", None)
        if live and live.accept and response.status_code == 101:
            for name, value in live.accept.headers:
                response.headers[name.decode("latin-1")] = value.decode("latin-1")
        return response

    # -- an open connection ----------------------------------------------------------

    async def _serve(self, socket: ServerConnection) -> None:
        live: _Live = socket.gateway_live  # type: ignore[attr-defined]
        live.served = True
        conn = live.conn
        self.metrics.add("connections_open", 1, "open WebSocket connections")
        # websockets keeps the handshake for the connection's life; websocket.connect
        # already carried the headers, so an idle connection need not hold them twice.
        socket.request.headers = Headers()
        socket.response.headers = Headers()
        live.open = True
        self._wake_sender(live)  # replies that came with or right after the accept
        await self.instances.opened(conn)  # again, with the state the accept gave
        try:
            async for frame in socket:
                try:
                    await self.runtime.send(conn.channel, conn.receive_message(frame))
                except HandoffError as exc:
                    # The message cannot reach a consumer: say so rather than drop it.
                    self.log.warning("closing %s %s: %s", conn.info.path, conn.reply_channel, exc)
                    await socket.close(CLOSE_LAYER_UNAVAILABLE, "channel layer unavailable")
                    break
        except ConnectionClosed:
            pass
        finally:
            live.open = False
            if live.sender is not None:
                live.sender.cancel()
                await asyncio.gather(live.sender, return_exceptions=True)
            self.metrics.add("connections_open", -1, "open WebSocket connections")
            await self._disconnected(live, *_closed_with(socket))

    def _lost_before_open(self, live: _Live) -> None:
        if not live.served and self.live.get(live.conn.reply_channel) is live:
            self.runtime.spawn(self._disconnected(live, 1006, ""), "disconnected during the handshake")

    async def _disconnected(self, live: _Live, code: int, reason: str) -> None:
        """Tell the consumer, and leave every group the connection is in (once)."""
        conn = live.conn
        if self.live.get(conn.reply_channel) is not live:
            live.handler_done.set()
            return
        del self.live[conn.reply_channel]
        try:
            await self.runtime.send(conn.channel, conn.disconnect_message(code, reason))
        except HandoffError as exc:
            self.log.warning("websocket.disconnect for %s not delivered: %s", conn.reply_channel, exc)
        for group in list(conn.groups):
            await self._leave(group, conn.reply_channel)
        await self.instances.closed(conn)
        live.handler_done.set()

    async def _send_replies(self, live: _Live) -> None:
        socket = live.socket
        assert socket is not None
        while live.queue:
            action = live.queue.popleft()
            try:
                if isinstance(action, Send):
                    await socket.send(action.text if action.text is not None else action.data)
                elif isinstance(action, Close):
                    await socket.close(action.code, action.reason)
                    return
                elif isinstance(action, GroupAdd):
                    await self.runtime.group_add(action.group, live.conn.reply_channel)
                elif isinstance(action, GroupDiscard):
                    await self.runtime.group_discard(action.group, live.conn.reply_channel)
            except ConnectionClosed:
                return
            except HandoffError as exc:
                self.log.warning("group change for %s failed: %s", live.conn.reply_channel, exc)
            except Exception as exc:  # layer errors on group changes are not fatal to the socket
                self.log.warning("reply for %s failed: %s: %s", live.conn.reply_channel, type(exc).__name__, exc)

    # -- replies from consumers ---------------------------------------------------------

    async def handle(self, channel: str, message: dict[str, Any]) -> None:
        live = self.live.get(channel)
        if live is None:
            self.metrics.inc("replies_dropped_total", "replies for connections that are gone",
                             type=message["type"])
            if message["type"] == "websocket.group_add":
                # The consumer already added the reply channel to the group on the layer
                # (see consumers.websocket); nobody will remove it if we do not.
                self._leave_soon(message["group"], channel)
            return
        self._carry_out(live, live.conn.on_reply(message))  # InvalidMessage: answer_invalid closes

    def _carry_out(self, live: _Live, actions: list[Any]) -> None:
        """Answer the handshake, or queue the actions for the connection's sender."""
        for action in actions:
            if not live.answered.done() and isinstance(action, (Accept, Close)):
                live.answered.set_result(action)
                continue
            if len(live.queue) >= self.section.send_queue:
                self.metrics.inc("slow_clients_closed_total", "connections closed for not reading")
                self.log.warning("closing %s: %d replies queued", live.conn.reply_channel, len(live.queue))
                self._close_now(live, CLOSE_SLOW_CLIENT, "client too slow")
                return
            self._queue(live, action)

    def _queue(self, live: _Live, action: Any) -> None:
        live.queue.append(action)
        self._wake_sender(live)

    def _wake_sender(self, live: _Live) -> None:
        # The sender returns as soon as the queue is empty; with no await between
        # its last check and its end, a finished task never strands a queued action.
        if live.open and live.queue and (live.sender is None or live.sender.done()):
            live.sender = asyncio.create_task(self._send_replies(live))

    async def answer_invalid(self, channel: str, message: Any, problem: str) -> None:
        """Close the connection 1008 after the replies before it (refuse the handshake
        when it is not answered yet); later replies to it are dropped."""
        live = self.live.get(channel)
        if live is None:
            return
        live.conn.phase = Phase.CLOSED
        self._carry_out(live, [Close(CLOSE_POLICY, "invalid message from the application")])

    def _close_now(self, live: _Live, code: int, reason: str) -> None:
        """Close with ``code`` now, ahead of the replies queued (which are dropped).

        The sender task may be stuck writing to a client that does not read:
        it is cancelled, so the close frame goes out at once, behind whatever
        the transport holds already. A client that reads again within the
        close timeout gets it; one that never does is cut off then, and the
        consumer's ``websocket.disconnect`` still says ``code`` (see
        :func:`_closed_with`).
        """
        live.conn.phase = Phase.CLOSED
        live.queue.clear()
        if live.sender is not None:
            live.sender.cancel()
        if live.socket is not None:
            self.runtime.spawn(live.socket.close(code, reason), "close")

    # -- keepalive -----------------------------------------------------------------------

    async def _keepalive_forever(self, interval: float) -> None:
        """Ping every open connection each ``interval``; close 1011 those whose
        pong has not come within ``ping_timeout``."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            sockets = [live.socket for live in list(self.live.values()) if live.open and live.socket]
            waiters = await asyncio.gather(*(self._ping(socket) for socket in sockets))
            if self.section.ping_timeout is not None:
                pending = [(s, w) for s, w in zip(sockets, waiters) if w is not None]
                loop.call_later(self.section.ping_timeout, self._close_unanswered, pending)

    @staticmethod
    async def _ping(socket: ServerConnection) -> asyncio.Future | None:
        try:
            return await socket.ping()
        except ConnectionClosed:
            return None

    def _close_unanswered(self, pending: list[tuple[ServerConnection, asyncio.Future]]) -> None:
        for socket, waiter in pending:
            if not waiter.done():
                self.metrics.inc("keepalive_timeouts_total", "connections closed for a missing pong")
                self.runtime.spawn(socket.close(1011, "keepalive ping timeout"), "close")

    # -- groups --------------------------------------------------------------------------

    def _refresh_groups_soon(self) -> None:
        self.runtime.spawn(self._refresh_groups(), "refresh groups after layer recovery")

    async def _refresh_groups_forever(self) -> None:
        while True:
            await asyncio.sleep(self.section.group_refresh)
            await self._refresh_groups()

    async def _refresh_groups(self) -> None:
        """Re-add every open connection to its groups: memberships expire after
        ``group_expiry``, and a Redis restarted without persistence forgot them."""
        for live in list(self.live.values()):
            for group in list(live.conn.groups):
                try:
                    await self.runtime.group_add(group, live.conn.reply_channel)
                except Exception as exc:
                    self.log.warning("refreshing group %s failed: %s", group, exc)
                    return


def _closed_with(socket: ServerConnection) -> tuple[int, str]:
    """The close code and reason of a closed connection, for ``websocket.disconnect``.

    The client's close frame when one came; else the one the gateway sent (a
    client closed 1013 for not reading never answers it, and websockets then
    reports 1006, though the gateway chose the code); else 1006: the
    connection dropped without either.
    """
    protocol = socket.protocol
    for frame in (protocol.close_rcvd, protocol.close_sent):
        if frame is not None:
            return int(frame.code), frame.reason
    return 1006, ""
