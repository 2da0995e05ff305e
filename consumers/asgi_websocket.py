"""``websocket.*`` channel messages <-> the ASGI WebSocket interface, with no I/O.

``gateway worker`` runs stock Channels consumers (``AsyncWebsocketConsumer``
and friends, ``URLRouter``, ``AuthMiddlewareStack``) with one application
instance per connection, as Daphne does (:mod:`gateways.core.asgi_host`).
This module is the translation it needs, as pure functions over the message
shapes of protocol_specs/websocket.md:

- :func:`scope` builds the ASGI ``websocket`` scope from ``websocket.connect``;
- :func:`event` turns a gateway message into the ASGI event the instance receives;
- :func:`reply` turns what the instance sends (``websocket.accept``,
  ``websocket.send``, ``websocket.close``) into the message for the
  connection's reply channel.

It lives in ``consumers`` because it depends on the spec only, like every
consumer module; the core finds it by the name ``consumers.asgi_<protocol>``
(see :func:`gateways.core.asgi_host.adapter_for`), so the core names no protocol.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

#: The message types this module translates; all of them belong to one connection.
MESSAGE_TYPES = frozenset({"websocket.connect", "websocket.receive", "websocket.disconnect"})

#: ``state`` key under which the connection's handshake (what the scope needs
#: beyond the path) is kept by the gateway, so that an instance re-created
#: after a worker restart sees the same cookies and query string.
HANDSHAKE_STATE = "asgi"

#: Headers kept for a re-created instance: what Channels' middleware reads.
_KEPT_HEADERS = frozenset({b"cookie", b"origin", b"authorization"})


def handles(message: dict[str, Any]) -> bool:
    """True for the messages of a connection (connect, receive, disconnect)."""
    return message.get("type") in MESSAGE_TYPES


def connection(message: dict[str, Any]) -> str | None:
    """The connection a message belongs to: its reply channel."""
    return message.get("reply_channel")


def starts(message: dict[str, Any]) -> bool:
    """True for the message that opens a connection (``websocket.connect``)."""
    return message.get("type") == "websocket.connect"


def ends(message: dict[str, Any]) -> bool:
    """True for the last message of a connection (``websocket.disconnect``)."""
    return message.get("type") == "websocket.disconnect"


def scope(message: dict[str, Any]) -> dict[str, Any]:
    """The ASGI ``websocket`` scope for the connection of ``message``.

    From ``websocket.connect`` it is complete. From a later message (an
    instance re-created because the one that saw the connect is gone) the
    handshake comes from the ``state`` the first instance's accept left with
    the gateway (:func:`reply`): query string, cookies and the few headers
    middleware reads; the client and server addresses are unknown then.

    ``raw_path`` is the decoded ``path`` quoted again (the gateway sends only
    the decoded path); ``url_route`` is added by ``URLRouter`` as usual.
    """
    kept = (message.get("state") or {}).get(HANDSHAKE_STATE) or {}
    if starts(message):
        headers = message.get("headers", [])
        query_string = message.get("query_string", b"")
        subprotocols = message.get("subprotocols", [])
    else:
        headers = kept.get("headers", [])
        query_string = kept.get("query_string", b"")
        subprotocols = kept.get("subprotocols", [])
    path = message.get("path", "/")
    client, server = message.get("client"), message.get("server")
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": message.get("scheme") or kept.get("scheme", "ws"),
        "path": path,
        "raw_path": quote(path, safe="/:@!$&'()*+,;=~").encode("ascii"),
        "query_string": bytes(query_string),
        "root_path": "",
        "headers": [(bytes(name), bytes(value)) for name, value in headers],
        "client": list(client) if client else None,
        "server": list(server) if server else None,
        "subprotocols": list(subprotocols),
        "extensions": {},
    }


def event(message: dict[str, Any]) -> dict[str, Any]:
    """The ASGI event for a gateway message.

    The gateway's own keys (``id``, ``reply_channel``, ``path``, ``kwargs``,
    ``order``, ``state``) stay in it, as extra keys ASGI applications ignore;
    ``websocket.receive`` gets both ``text`` and ``bytes`` (one of them None)
    and ``websocket.disconnect`` its ``reason``, as the ASGI spec says.
    """
    result = dict(message)
    mtype = message["type"]
    if mtype == "websocket.receive":
        result.setdefault("text", None)
        result.setdefault("bytes", None)
    elif mtype == "websocket.disconnect":
        result.setdefault("code", 1006)
        result.setdefault("reason", "")
    return result


def recreated_connect(message: dict[str, Any]) -> dict[str, Any]:
    """The ``websocket.connect`` event an instance re-created for ``message`` starts with."""
    return {"type": "websocket.connect", "reply_channel": message.get("reply_channel"),
            "path": message.get("path", "/"), "kwargs": message.get("kwargs", {}), "recreated": True}


def resume(start: dict[str, Any], acknowledge: str) -> dict[str, Any]:
    """The ``websocket.connect`` with ``resume`` that hands the connection of an
    instance started by ``start`` over to another worker, which answers
    :func:`resumed` on the channel ``acknowledge`` once the connection's new
    instance handled it.

    A stopping worker sends it to the route's channel for each connection it
    hosts; the worker that takes it re-creates the instance at once (see
    :mod:`gateways.core.asgi_host`). It repeats the handshake: the original
    connect's keys when the instance started from it, else what the gateway
    kept (:func:`handshake_state`); the handshake is complete, so ``accepted``
    is true and the new instance's accept is absorbed.
    """
    if starts(start):
        message = dict(start)
    else:
        kept = (start.get("state") or {}).get(HANDSHAKE_STATE) or {}
        message = {"type": "websocket.connect", "reply_channel": start.get("reply_channel"),
                   "path": start.get("path", "/"), "kwargs": start.get("kwargs", {}),
                   "query_string": bytes(kept.get("query_string", b"")),
                   "headers": [[bytes(n), bytes(v)] for n, v in kept.get("headers", [])],
                   "client": None, "server": None, "subprotocols": list(kept.get("subprotocols", [])),
                   "scheme": kept.get("scheme", "ws")}
    message.update(id=uuid.uuid4().hex, order=0, accepted=True, resume=acknowledge)
    return message


def resumes(message: dict[str, Any]) -> str | None:
    """For a connection handed over by a stopping worker (:func:`resume`): the
    channel to acknowledge it on; None for any other message."""
    if message.get("type") == "websocket.connect" and isinstance(message.get("resume"), str):
        return message["resume"]
    return None


def resumed(message: dict[str, Any]) -> dict[str, Any]:
    """The acknowledgement of the resume ``message``: the connection has an instance again."""
    return {"type": "websocket.resumed", "reply_channel": message.get("reply_channel")}


def handshake_state(connect: dict[str, Any]) -> dict[str, Any]:
    """What of the handshake the gateway keeps for a re-created instance (see :func:`scope`)."""
    kept: dict[str, Any] = {}
    headers = [[bytes(n), bytes(v)] for n, v in connect.get("headers", []) if bytes(n) in _KEPT_HEADERS]
    if headers:
        kept["headers"] = headers
    if connect.get("query_string"):
        kept["query_string"] = bytes(connect["query_string"])
    if connect.get("subprotocols"):
        kept["subprotocols"] = list(connect["subprotocols"])
    if connect.get("scheme", "ws") != "ws":
        kept["scheme"] = connect["scheme"]
    return kept


def failed(start: dict[str, Any]) -> dict[str, Any]:
    """What closes a connection whose application failed (HTTP 403 before accept).

    Daphne closes with 1011; the spec lets applications send only 1000 and
    3000–4999, so the reason says what happened.
    """
    return {"type": "websocket.close", "code": 1000, "reason": "internal server error"}


def _close_code(code: Any) -> int:
    # The spec takes 1000 and 3000-4999 from applications (the rest are the
    # protocol's own); any other code is sent as a normal close.
    if isinstance(code, int) and (code == 1000 or 3000 <= code <= 4999):
        return code
    return 1000


def reply(sent: dict[str, Any], start: dict[str, Any], recreated: bool = False) -> dict[str, Any] | None:
    """The reply-channel message for what an ASGI instance sends, or None for nothing.

    Args:
        sent: the instance's ``send`` event.
        start: the message that started the instance (``websocket.connect``,
            or the message it was re-created for).
        recreated: the instance was re-created after the connection opened:
            its accept was answered long ago, so it is absorbed.

    ``websocket.accept`` carries the handshake :func:`handshake_state` keeps;
    on a route that auto-accepts it carries only that state. A close code
    outside 1000 and 3000–4999 (the codes the spec lets applications send)
    becomes 1000. ``websocket.group_add``/``group_discard`` go through as they
    are (gateway-kept groups of the connection's reply channel).

    Raises:
        ValueError: an event the WebSocket spec has no message for.
    """
    mtype = sent.get("type")
    if mtype == "websocket.accept":
        if recreated:
            return None
        message: dict[str, Any] = {"type": "websocket.accept"}
        kept = handshake_state(start)
        if kept:
            message["state"] = {HANDSHAKE_STATE: kept}
        if start.get("accepted"):  # the route auto-accepted: only state may follow
            return message if kept else None
        if sent.get("subprotocol") is not None:
            message["subprotocol"] = sent["subprotocol"]
        if sent.get("headers"):
            message["headers"] = [[bytes(n), bytes(v)] for n, v in sent["headers"]]
        return message
    if mtype == "websocket.send":
        if sent.get("bytes") is not None:
            return {"type": "websocket.send", "bytes": bytes(sent["bytes"])}
        if sent.get("text") is not None:
            return {"type": "websocket.send", "text": sent["text"]}
        raise ValueError("websocket.send needs text or bytes")
    if mtype == "websocket.close":
        reason = sent.get("reason") or ""
        return {"type": "websocket.close", "code": _close_code(sent.get("code", 1000)), "reason": reason[:123]}
    if mtype in ("websocket.group_add", "websocket.group_discard"):
        return {"type": mtype, "group": sent["group"]}
    raise ValueError(f"{mtype!r} cannot be sent on a WebSocket connection behind the gateway")
