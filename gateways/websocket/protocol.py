"""WebSocket connections <-> ``websocket.*`` channel messages, with no I/O.

The I/O module (:mod:`gateways.websocket.daemon`) feeds events in and carries
out the :class:`Action` objects that consumer messages turn into; everything
here works on plain data and is tested that way.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gateways.core.specs import InvalidMessage

#: Close code when the channel layer refuses a message ("Try Again Later").
CLOSE_LAYER_UNAVAILABLE = 1013
#: Close code for a consumer that sends something the spec does not allow.
CLOSE_POLICY = 1008
#: Close code when the gateway shuts down.
CLOSE_GOING_AWAY = 1001
#: Close code when a client does not read fast enough and its queue overflows.
CLOSE_SLOW_CLIENT = 1013


@dataclass(frozen=True)
class Route:
    """A path pattern and the channel its connections' messages go to.

    Args:
        pattern: compiled regular expression matched against the whole path.
        channel: the channel for ``websocket.connect/receive/disconnect``.
        auto_accept: accept the handshake without waiting for a consumer.
    """

    pattern: re.Pattern[str]
    channel: str
    auto_accept: bool = False


def match_route(routes: list[Route], path: str) -> tuple[Route, dict[str, str]] | None:
    """The first route whose pattern matches all of ``path``, with its named groups."""
    for route in routes:
        found = route.pattern.fullmatch(path)
        if found:
            return route, {k: v for k, v in found.groupdict().items() if v is not None}
    return None


class Phase(Enum):
    """Where a connection is in its life."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


@dataclass
class ConnectionInfo:
    """What the handshake told us about a connection.

    Args:
        path: the request path, decoded.
        query_string: the raw query string.
        headers: request headers as ``[name, value]`` byte pairs, names lowercased.
        client: the peer's ``[host, port]``.
        server: our ``[host, port]``.
        subprotocols: the subprotocols the client asked for, in its order.
        scheme: ``ws`` or ``wss``.
    """

    path: str
    query_string: bytes
    headers: list[list[bytes]]
    client: list[Any] | None
    server: list[Any] | None
    subprotocols: list[str]
    scheme: str = "ws"


# -- actions a consumer message turns into -----------------------------------


@dataclass(frozen=True)
class Accept:
    """Complete the handshake."""

    subprotocol: str | None
    headers: list[list[bytes]]


@dataclass(frozen=True)
class Send:
    """Send one frame; exactly one of ``text``/``data`` is set."""

    text: str | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class Close:
    """Close the connection, or reject the handshake (HTTP 403) before it completes.

    Args:
        code: the close code (unused for a rejected handshake).
        reason: the close reason.
    """

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True)
class GroupAdd:
    """Add the connection's reply channel to a group."""

    group: str


@dataclass(frozen=True)
class GroupDiscard:
    """Remove the connection's reply channel from a group."""

    group: str


Action = Accept | Send | Close | GroupAdd | GroupDiscard


@dataclass
class Connection:
    """The channel-side state of one WebSocket connection.

    Args:
        info: what the handshake told us.
        route: the route the path matched.
        kwargs: the route's named groups.
        reply_channel: the channel consumers answer on.
    """

    info: ConnectionInfo
    route: Route
    kwargs: dict[str, str]
    reply_channel: str
    phase: Phase = Phase.CONNECTING
    order: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    close_code: int | None = None
    #: The route accepted the handshake itself (``auto_accept``).
    auto_accepted: bool = False
    #: A consumer's ``websocket.accept`` arrived (on an auto-accepted connection it only sets state).
    accept_seen: bool = False

    @property
    def channel(self) -> str:
        """Where this connection's messages go."""
        return self.route.channel

    def _common(self, mtype: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": mtype,
            "id": uuid.uuid4().hex,
            "reply_channel": self.reply_channel,
            "path": self.info.path,
            "kwargs": dict(self.kwargs),
            "order": self.order,
        }
        if self.state:
            message["state"] = self.state
        return message

    # -- events from the client --------------------------------------------

    def connect_message(self) -> dict[str, Any]:
        """``websocket.connect``, order 0."""
        message = self._common("websocket.connect")
        info = self.info
        message.update(
            query_string=info.query_string,
            headers=[list(h) for h in info.headers],
            client=info.client,
            server=info.server,
            subprotocols=list(info.subprotocols),
            scheme=info.scheme,
            accepted=self.auto_accepted,
        )
        return message

    def receive_message(self, frame: str | bytes) -> dict[str, Any]:
        """``websocket.receive`` for one frame; each gets the next ``order``."""
        self.order += 1
        message = self._common("websocket.receive")
        if isinstance(frame, str):
            message["text"] = frame
        else:
            message["bytes"] = bytes(frame)
        return message

    def disconnect_message(self, code: int, reason: str = "") -> dict[str, Any]:
        """``websocket.disconnect``; the connection is closed from now on."""
        self.order += 1
        self.phase = Phase.CLOSED
        self.close_code = code
        message = self._common("websocket.disconnect")
        message["code"] = code
        if reason:
            message["reason"] = reason
        return message

    # -- messages from consumers ---------------------------------------------

    def on_reply(self, message: dict[str, Any]) -> list[Action]:
        """Turn a (schema-valid) reply-channel message into actions.

        ``websocket.send`` before accept accepts first, as Daphne does. On an
        auto-accepted connection the consumer's first ``websocket.accept``
        only sets ``state``. Group changes are remembered even on a closed
        connection, so that leaving every group on close covers them too.
        Raises :class:`InvalidMessage` for what the current phase does not allow
        (the gateway then closes the connection 1008).
        """
        mtype = message["type"]
        if mtype == "websocket.group_add":
            self.groups.add(message["group"])
            return [] if self.phase is Phase.CLOSED else [GroupAdd(message["group"])]
        if mtype == "websocket.group_discard":
            self.groups.discard(message["group"])
            return [] if self.phase is Phase.CLOSED else [GroupDiscard(message["group"])]
        if self.phase is Phase.CLOSED:
            return []
        if mtype == "websocket.accept":
            if self.phase is not Phase.CONNECTING:
                if self.auto_accepted and not self.accept_seen:
                    return self._set_state(message)
                raise InvalidMessage("websocket.accept on a connection that is already open")
            self.phase = Phase.OPEN
            self.accept_seen = True
            if message.get("state"):
                self.state = dict(message["state"])
            subprotocol = message.get("subprotocol")
            if subprotocol is not None and subprotocol not in self.info.subprotocols:
                raise InvalidMessage(f"subprotocol {subprotocol!r} was not requested by the client")
            return [Accept(subprotocol, [list(h) for h in message.get("headers", [])])]
        if mtype == "websocket.send":
            frame = Send(text=message["text"]) if message.get("text") is not None else Send(data=message["bytes"])
            if self.phase is Phase.CONNECTING:
                self.phase = Phase.OPEN
                return [Accept(None, []), frame]
            return [frame]
        if mtype == "websocket.close":
            self.phase = Phase.CLOSED
            self.close_code = message.get("code", 1000)
            return [Close(self.close_code, message.get("reason", ""))]
        raise InvalidMessage(f"{mtype} is not a reply-channel message")

    def _set_state(self, message: dict[str, Any]) -> list[Action]:
        """The consumer's accept of an auto-accepted connection: the handshake is
        done, so only ``state`` can still take effect."""
        if message.get("subprotocol") is not None or message.get("headers"):
            raise InvalidMessage("the route auto-accepts: the handshake is done, so websocket.accept "
                                "may carry only state, not subprotocol or headers")
        self.accept_seen = True
        if message.get("state"):
            self.state = dict(message["state"])
        return []

    def accept_automatically(self) -> list[Action]:
        """Accept without a consumer's answer (routes with ``auto_accept``);
        call it before :meth:`connect_message`, which then says ``accepted``."""
        self.phase = Phase.OPEN
        self.auto_accepted = True
        return [Accept(None, [])]
