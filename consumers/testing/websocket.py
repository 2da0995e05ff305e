"""Test a ``websocket.*`` consumer as one or more client connections.

::

    async with WebSocketCommunicator(EchoConsumer, "/echo/?v=1", subprotocols=["v1"]) as ws:
        connected, subprotocol = await ws.connect()
        await ws.send_json_to({"hello": "world"})
        assert await ws.receive_json_from() == {"hello": "world"}

Several connections to the same consumer instance (a chat room) share one
harness: pass the first communicator (or a :class:`ConsumerHarness`)
instead of a consumer class.
"""

from __future__ import annotations

import json
import uuid
from http.cookies import SimpleCookie
from typing import Any, Iterable
from urllib.parse import unquote, urlparse

from consumers.testing.harness import TIMEOUT, Communicator

__all__ = ["WebSocketCommunicator"]

Header = tuple[str | bytes, str | bytes]


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


class WebSocketCommunicator(Communicator):
    """One client connection to a :class:`~consumers.websocket.WebSocketConsumer`.

    Shaped like Channels' ``WebsocketCommunicator``; the messages are the
    gateway's (``protocol_specs/websocket.md``).

    Args:
        consumer: the consumer class, or a harness/communicator to share.
        path: the request path, with an optional query string.
        channel: the channel the route sends to (when ``consumer`` is a class).
        kwargs: the route's named groups.
        headers: request headers, ``(name, value)`` as str or bytes.
        subprotocols: the subprotocols the client offers.
        cookies: cookies to send in a ``Cookie`` header.
        client: the client's address.
        scheme: ``ws`` or ``wss``.
        timeout: upper bound, in seconds, on every wait.
        raise_errors: see :class:`ConsumerHarness`.
    """

    default_channel = "websocket.test"

    def __init__(self, consumer: Any, path: str = "/", *, channel: str | None = None,
                 kwargs: dict[str, str] | None = None, headers: Iterable[Header] | None = None,
                 subprotocols: list[str] | None = None, cookies: dict[str, str] | None = None,
                 client: tuple[str, int] | None = ("127.0.0.1", 50000), scheme: str = "ws",
                 timeout: float = TIMEOUT, raise_errors: bool = True) -> None:
        super().__init__(consumer, channel, timeout=timeout, raise_errors=raise_errors)
        parsed = urlparse(path)
        self.path = unquote(parsed.path)
        self.query_string = parsed.query.encode("utf-8")
        self.kwargs = dict(kwargs or {})
        self.headers = [[_bytes(name).lower(), _bytes(value)] for name, value in headers or []]
        if cookies:
            jar = SimpleCookie()
            for name, value in cookies.items():
                jar[name] = value
            self.headers.append([b"cookie", jar.output(header="", sep=";").strip().encode("latin-1")])
        self.subprotocols = list(subprotocols or [])
        self.client = list(client) if client else None
        self.scheme = scheme
        self.reply_channel = ""
        self.order = 0
        #: What the consumer put in ``accept(state=...)``; repeated in every later message.
        self.state: dict[str, Any] = {}
        #: The headers of the ``websocket.accept``.
        self.response_headers: list[list[bytes]] | None = None
        #: The groups the consumer made this connection join.
        self.groups: set[str] = set()
        self.connected = False

    # -- messages ---------------------------------------------------------------

    def _message(self, mtype: str, **extra: Any) -> dict[str, Any]:
        message = {"type": mtype, "id": uuid.uuid4().hex, "reply_channel": self.reply_channel,
                   "path": self.path, "kwargs": self.kwargs, "order": self.order, **extra}
        if self.state and mtype != "websocket.connect":
            message["state"] = self.state
        return message

    async def _absorb(self, channel: str, message: dict[str, Any]) -> bool:
        """Carry out group changes for this connection on the layer, as the gateway
        would, and keep them from the test."""
        if channel != self.reply_channel:
            return False
        if message.get("type") == "websocket.group_add":
            await self.layer.group_add(message["group"], self.reply_channel)
            self.groups.add(message["group"])
            return True
        if message.get("type") == "websocket.group_discard":
            await self.layer.group_discard(message["group"], self.reply_channel)
            self.groups.discard(message["group"])
            return True
        return False

    # -- the client's side ----------------------------------------------------------

    async def connect(self, timeout: float | None = None) -> tuple[bool, Any]:
        """Send ``websocket.connect`` and wait for the consumer's answer.

        Returns ``(True, subprotocol)`` when it accepted and ``(False, code)``
        when it closed; returns once the consumer finished handling the connect
        (groups it joined are joined).
        """
        self.reply_channel = await self.harness.new_reply_channel()
        self.harness.add_absorber(self._absorb)
        done = await self.harness.deliver(self._message(
            "websocket.connect", query_string=self.query_string, headers=self.headers, client=self.client,
            server=["127.0.0.1", 8765], subprotocols=self.subprotocols, scheme=self.scheme))
        answer = await self.harness.receive(self.reply_channel, timeout=timeout)
        await self.harness.wait_for(done.done, "the connect to be handled", timeout)
        if answer["type"] == "websocket.close":
            return False, answer.get("code", 1000)
        assert answer["type"] == "websocket.accept", f"expected websocket.accept or close, got {answer!r}"
        self.connected = True
        self.state = answer.get("state", {})
        self.response_headers = answer.get("headers", [])
        return True, answer.get("subprotocol")

    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Send a frame: ``websocket.receive`` with ``text`` or ``bytes``."""
        assert (text_data is None) != (bytes_data is None), "give exactly one of text_data and bytes_data"
        assert self.connected, "connect() first (and be accepted)"
        self.order += 1
        payload = {"text": text_data} if text_data is not None else {"bytes": bytes_data}
        await self.harness.deliver(self._message("websocket.receive", **payload))

    async def send_json_to(self, data: Any) -> None:
        """Send ``data`` as a JSON text frame."""
        await self.send_to(text_data=json.dumps(data))

    async def receive_output(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message the consumer sent to this connection (group changes are carried out, not returned)."""
        return await self.harness.receive(self.reply_channel, timeout=timeout)

    async def receive_from(self, timeout: float | None = None) -> str | bytes:
        """The next frame the consumer sent: text as str, binary as bytes."""
        message = await self.receive_output(timeout)
        assert message["type"] == "websocket.send", f"expected websocket.send, got {message!r}"
        return message["text"] if message.get("text") is not None else message["bytes"]

    async def receive_json_from(self, timeout: float | None = None) -> Any:
        """The next frame, a JSON text, decoded."""
        payload = await self.receive_from(timeout)
        assert isinstance(payload, str), f"expected a JSON text frame, got {payload!r}"
        return json.loads(payload)

    async def receive_nothing(self, timeout: float | None = None) -> bool:
        """True when the consumer, done with everything it was given, sent this connection nothing."""
        return await self.harness.receive_nothing(self.reply_channel, timeout)

    async def disconnect(self, code: int = 1000, timeout: float | None = None) -> None:
        """Send ``websocket.disconnect``, wait until it is handled, and leave every group
        (as the gateway does when a connection closes)."""
        self.order += 1
        done = await self.harness.deliver(self._message("websocket.disconnect", code=code))
        await self.harness.wait_for(done.done, "the disconnect to be handled", timeout)
        # Also the groups the consumer joined on the layer itself, without a message.
        joined = {g for g, members in self.layer.groups.items() if self.reply_channel in members}
        for group in joined | self.groups:
            await self.layer.group_discard(group, self.reply_channel)
        self.groups.clear()
        self.connected = False
