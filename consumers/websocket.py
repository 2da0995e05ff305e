"""Consumers for ``websocket.*`` messages (protocol_specs/websocket.md).

::

    class EchoConsumer(WebSocketConsumer):
        async def receive(self, ws):
            await ws.send(text=ws.text, bytes=ws.bytes)

One instance serves every connection routed to its channel; ``ws`` (a
:class:`WebSocketContext`) is the connection the message came from.
"""

from __future__ import annotations

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
        """Complete the handshake; ``state`` comes back in every later message."""
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
        """Join ``group``; the gateway leaves it when the connection closes."""
        await self._reply({"type": "websocket.group_add", "group": group})

    async def group_discard(self, group: str) -> None:
        """Leave ``group``."""
        await self._reply({"type": "websocket.group_discard", "group": group})

    async def broadcast(self, group: str, text: str | None = None, bytes: bytes | None = None) -> None:
        """Send a text or binary message to every connection in ``group``."""
        await self.group_send(group, _frame(text, bytes))


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
        """A client is handshaking; accept or close."""
        await ws.accept()

    async def receive(self, ws: WebSocketContext) -> None:
        """A message from the client (``ws.text`` or ``ws.bytes``)."""

    async def disconnect(self, ws: WebSocketContext) -> None:
        """The connection closed (``ws.code``)."""


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

