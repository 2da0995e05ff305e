"""Consumers for ``websocket.*`` messages (protocol_specs/websocket.md).

::

    class EchoConsumer(WebSocketConsumer):
        async def receive(self, ws):
            await ws.send(text=ws.text, bytes=ws.bytes)

An instance may serve many connections (under ``runworker`` one instance
serves the whole channel; under ``gateway worker`` each lane has its own), so
keep nothing about a connection on ``self``: ``ws`` (a
:class:`WebSocketContext`) is the connection the message came from, and
``accept(state=...)`` keeps what later messages need.

Groups: :meth:`WebSocketContext.group_add` is in effect when it returns (a
broadcast right after it reaches the connection), and the gateway leaves the
group when the connection closes. :func:`group_name` makes a valid group name
out of anything (route kwargs included); :func:`group_members` lists a
group's connections on every gateway instance ("who is online").
"""

from __future__ import annotations

import hashlib
import re
import time
from http.cookies import SimpleCookie
from typing import Any

from consumers.base import GatewayConsumer, MessageContext


class WebSocketContext(MessageContext):
    """One ``websocket.*`` message and its connection."""

    @property
    def path(self) -> str:
        """The connection's path."""
        return self.message["path"]

    @property
    def kwargs(self) -> dict[str, str]:
        """The route's named groups."""
        return self.message.get("kwargs", {})

    @property
    def state(self) -> dict[str, Any]:
        """What the consumer put in ``accept(state=...)`` ({} before)."""
        return self.message.get("state", {})

    @property
    def order(self) -> int:
        """The message's position in the connection's conversation."""
        return self.message["order"]

    @property
    def accepted(self) -> bool:
        """True on the ``websocket.connect`` of a route with ``auto_accept``: the
        handshake is already complete, and :meth:`accept` only sets ``state``."""
        return bool(self.message.get("accepted", False))

    @property
    def text(self) -> str | None:
        """The text of a ``websocket.receive``, or None."""
        return self.message.get("text")

    @property
    def bytes(self) -> bytes | None:
        """The bytes of a ``websocket.receive``, or None."""
        return self.message.get("bytes")

    @property
    def code(self) -> int | None:
        """The close code of a ``websocket.disconnect``."""
        return self.message.get("code")

    def header(self, name: str) -> str | None:
        """A request header of the ``websocket.connect`` (None when absent)."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.message.get("headers", []):
            if key == wanted:
                return value.decode("latin-1")
        return None

    def cookies(self) -> dict[str, str]:
        """The cookies of the ``websocket.connect``."""
        jar = SimpleCookie()
        jar.load(self.header("cookie") or "")
        return {name: morsel.value for name, morsel in jar.items()}

    async def _reply(self, message: dict[str, Any]) -> None:
        await self.send_to(self.message["reply_channel"], message)

    async def accept(self, subprotocol: str | None = None, headers: list[list[bytes]] | None = None,
                     state: dict[str, Any] | None = None) -> None:
        """Complete the handshake; ``state`` comes back in every later message.

        On an auto-accepted connection (:attr:`accepted`) the handshake is
        done: this only sets ``state`` (nothing is sent without one), and
        ``subprotocol`` or ``headers`` raise ValueError, since they can no
        longer reach the client. Messages the gateway sent before it got the
        state do not carry it.
        """
        if self.accepted:
            if subprotocol is not None or headers:
                raise ValueError("this route auto-accepts: the handshake is complete, so subprotocol "
                                 "and headers cannot be chosen any more (only state can be set)")
            if state:
                await self._reply({"type": "websocket.accept", "state": state})
            return
        message: dict[str, Any] = {"type": "websocket.accept"}
        if subprotocol is not None:
            message["subprotocol"] = subprotocol
        if headers:
            message["headers"] = headers
        if state:
            message["state"] = state
        await self._reply(message)

    async def send(self, text: str | None = None, bytes: bytes | None = None) -> None:
        """Send a text or a binary message to the client."""
        await self._reply(_frame(text, bytes))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (before accept: reject the handshake with 403)."""
        message: dict[str, Any] = {"type": "websocket.close", "code": code}
        if reason:
            message["reason"] = reason
        await self._reply(message)

    async def group_add(self, group: str) -> None:
        """Join ``group``; in effect on return, left by the gateway when the connection closes.

        The reply channel is added on the layer here, so a broadcast sent
        right after this reaches the connection; then the gateway is told, so
        it keeps the membership fresh and removes it on close. Called in
        ``connect`` before :meth:`accept`, the membership is in effect before
        the client sees the connection open. Raises
        :class:`InvalidGroupName` for a name the layer would refuse (make
        names with :func:`group_name`).
        """
        check_group_name(group)
        await self.channel_layer.group_add(group, self.message["reply_channel"])
        await self._reply({"type": "websocket.group_add", "group": group})

    async def group_discard(self, group: str) -> None:
        """Leave ``group``; in effect on return."""
        check_group_name(group)
        await self.channel_layer.group_discard(group, self.message["reply_channel"])
        await self._reply({"type": "websocket.group_discard", "group": group})

    async def broadcast(self, group: str, text: str | None = None, bytes: bytes | None = None) -> None:
        """Send a text or binary message to every connection in ``group``."""
        check_group_name(group)
        await self.group_send(group, _frame(text, bytes))

    async def group_members(self, group: str) -> list[str]:
        """The reply channels in ``group`` on every gateway instance; see :func:`group_members`."""
        return await group_members(group, self.channel_layer)


def _frame(text: str | None, data: bytes | None) -> dict[str, Any]:
    if (text is None) == (data is None):
        raise ValueError("give exactly one of text and bytes")
    return {"type": "websocket.send", "text": text} if text is not None else {"type": "websocket.send", "bytes": data}


class WebSocketConsumer(GatewayConsumer):
    """Base class: override :meth:`connect`, :meth:`receive`, :meth:`disconnect`.

    The default :meth:`connect` accepts.
    """

    context_class = WebSocketContext

    async def websocket_connect(self, ws: WebSocketContext) -> None:
        await self.connect(ws)

    async def websocket_receive(self, ws: WebSocketContext) -> None:
        await self.receive(ws)

    async def websocket_disconnect(self, ws: WebSocketContext) -> None:
        await self.disconnect(ws)

    async def connect(self, ws: WebSocketContext) -> None:
        """A client is handshaking; accept or close (on a route with
        ``auto_accept`` the connection is already open, and accepting again is harmless)."""
        await ws.accept()

    async def receive(self, ws: WebSocketContext) -> None:
        """A message from the client (``ws.text`` or ``ws.bytes``)."""

    async def disconnect(self, ws: WebSocketContext) -> None:
        """The connection closed (``ws.code``)."""


# -- groups -----------------------------------------------------------------------

#: A group name the channel layer and the spec accept: ASCII letters, digits,
#: ``-``, ``_`` and ``.``, 1 to 99 characters (Channels' limit is under 100).
GROUP_NAME = re.compile(r"^[a-zA-Z0-9_.\-]{1,99}$")
_MAX_GROUP = 99
#: Characters :func:`group_name` keeps as they are; ``-`` starts an escape, ``.`` joins parts.
_KEPT = re.compile(r"[A-Za-z0-9_]")
#: Length of the hash that ends a shortened name (128 bits, hex).
_HASH_CHARS = 32


class InvalidGroupName(ValueError):
    """A group name the channel layer would refuse."""


def check_group_name(group: Any) -> str:
    """Return ``group`` if the layer accepts it as a group name; raise :class:`InvalidGroupName`."""
    if isinstance(group, str) and GROUP_NAME.fullmatch(group):  # ($ alone would allow a final \n)
        return group
    shown = group if not isinstance(group, str) or len(group) <= 120 else group[:117] + "..."
    raise InvalidGroupName(
        f"invalid group name {shown!r}: a group name is 1 to 99 ASCII letters, digits, '-', '_' "
        f"or '.'; build one from any text with consumers.websocket.group_name(), e.g. "
        f"group_name('chat', ws.kwargs['room'])")


def group_name(*parts: Any) -> str:
    """A valid group name made of ``parts`` (strings, or anything ``str()`` takes), e.g.
    ``group_name("chat", ws.kwargs["room"])``.

    Each part keeps its ASCII letters, digits and ``_``; every other character
    becomes ``-`` and the hex of its UTF-8 bytes (``ü`` -> ``-c3-bc``, ``-`` ->
    ``-2d``), and the parts are joined with ``.``; so ``("chat", "lobby")``
    gives ``chat.lobby`` and different parts give different names. A name
    longer than the layer allows keeps its first 65 characters and ends with
    ``--`` and 32 hex digits of its SHA-256 (a sequence no unshortened name
    contains). The result depends on nothing but ``parts``, so every process
    computes the same name.
    """
    if not parts:
        raise ValueError("group_name() needs at least one part")
    encoded = ".".join(_encode_part(str(part)) for part in parts)
    if not encoded:
        raise ValueError("group_name() of empty text: give a non-empty part")
    if len(encoded) <= _MAX_GROUP:
        return encoded
    digest = hashlib.sha256(encoded.encode("ascii")).hexdigest()[:_HASH_CHARS]
    head = encoded[:_MAX_GROUP - _HASH_CHARS - 2]
    # Do not cut an escape in two ('-' is always followed by two hex digits).
    if head.endswith("-"):
        head = head[:-1]
    elif len(head) >= 2 and head[-2] == "-":
        head = head[:-2]
    return f"{head}--{digest}"


def _encode_part(part: str) -> str:
    return "".join(ch if _KEPT.match(ch) else "".join(f"-{b:02x}" for b in ch.encode("utf-8"))
                   for ch in part)


async def group_members(group: str, layer: Any = None) -> list[str]:
    """The reply channels in ``group`` right now, earliest joined first.

    Reads the layer, so it lists the connections of every gateway instance;
    a closed connection is gone from the list once its gateway has left its
    groups (at once on a normal close). ``layer`` defaults to Django's
    default channel layer; from synchronous code use
    ``async_to_sync(group_members)(group)``. Works with channels_redis's
    layers (the project's included) and the in-memory ones; memberships
    older than ``group_expiry`` are not listed.
    """
    check_group_name(group)
    if layer is None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
    from channels.layers import InMemoryChannelLayer
    from channels_redis.core import RedisChannelLayer

    from gateways.core.compat_channels_redis import group_key

    # The same cut-off both layers apply when they drop expired memberships.
    cutoff = int(time.time()) - layer.group_expiry
    if isinstance(layer, InMemoryChannelLayer):
        joined = layer.groups.get(group, {})
        return sorted((c for c, at in joined.items() if at >= cutoff), key=joined.__getitem__)

    if not isinstance(layer, RedisChannelLayer):
        raise TypeError(f"group_members() cannot read groups of {type(layer).__name__}")
    # channels_redis keeps a group as a sorted set of channel names scored by
    # join time, and drops members older than group_expiry on the next group_send.
    connection = layer.connection(layer.consistent_hash(group))
    members = await connection.zrangebyscore(group_key(layer, group), min=f"({cutoff}", max="+inf")
    return [m.decode("utf-8") for m in members]


# -- Django sessions and users ---------------------------------------------------


async def session_state(ws: WebSocketContext) -> dict[str, Any]:
    """The ``state`` for ``accept()`` that carries the Django session and user.

    Reads the session cookie of the ``websocket.connect``; later messages
    carry the result, so :func:`get_user` works on every message.
    """
    from channels.db import database_sync_to_async
    from django.conf import settings
    from django.contrib.auth import get_user

    session_key = ws.cookies().get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return {}

    def load() -> dict[str, Any]:
        from importlib import import_module

        store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)

        class _Request:
            session = store

        user = get_user(_Request())
        state: dict[str, Any] = {"session_key": session_key}
        if user.is_authenticated:
            state["user_id"] = user.pk
        return state

    return await database_sync_to_async(load)()


async def get_user(ws: WebSocketContext) -> Any:
    """The Django user of the connection (AnonymousUser when none), from ``state``."""
    from channels.db import database_sync_to_async
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import AnonymousUser

    user_id = ws.state.get("user_id")
    if user_id is None:
        return AnonymousUser()

    def load() -> Any:
        try:
            return get_user_model().objects.get(pk=user_id)
        except get_user_model().DoesNotExist:
            return AnonymousUser()

    return await database_sync_to_async(load)()

