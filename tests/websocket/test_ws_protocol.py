"""The WebSocket translation module with plain data: no sockets, no layer."""

import re

import pytest

from gateways.core.specs import InvalidMessage, load_schema
from gateways.websocket.protocol import (
    Accept,
    Close,
    Connection,
    ConnectionInfo,
    GroupAdd,
    GroupDiscard,
    Phase,
    Route,
    Send,
    match_route,
)

SCHEMA = load_schema("websocket")
ROUTES = [Route(re.compile(r"^/chat/(?P<room>\w+)/$"), "ws.chat"), Route(re.compile("^/echo/$"), "ws.echo", True)]


def connection(subprotocols=()) -> Connection:
    info = ConnectionInfo("/chat/lobby/", b"a=1", [[b"host", b"x"]], ["127.0.0.1", 5000],
                          ["127.0.0.1", 8765], list(subprotocols))
    route, kwargs = match_route(ROUTES, info.path)
    return Connection(info, route, kwargs, "specific.abc!def")


def test_routes_match_the_whole_path_and_capture_kwargs():
    assert match_route(ROUTES, "/chat/lobby/")[1] == {"room": "lobby"}
    assert match_route(ROUTES, "/echo/")[0].auto_accept
    assert match_route(ROUTES, "/echo/extra") is None
    assert match_route(ROUTES, "/nowhere/") is None


def test_messages_carry_path_kwargs_reply_channel_and_order():
    conn = connection()
    connect = conn.connect_message()
    assert SCHEMA.problem(connect) is None
    assert (connect["order"], connect["kwargs"], connect["query_string"]) == (0, {"room": "lobby"}, b"a=1")
    first, second = conn.receive_message("hi"), conn.receive_message(b"\x00")
    assert (first["order"], first["text"], second["order"], second["bytes"]) == (1, "hi", 2, b"\x00")
    assert first["id"] != second["id"]
    for message in (first, second):
        assert SCHEMA.problem(message) is None
        assert message["reply_channel"] == "specific.abc!def" and message["path"] == "/chat/lobby/"
    disconnect = conn.disconnect_message(1001, "bye")
    assert SCHEMA.problem(disconnect) is None
    assert (disconnect["order"], disconnect["code"], conn.phase) == (3, 1001, Phase.CLOSED)


def test_accept_state_is_repeated_in_later_messages():
    conn = connection(["v1"])
    actions = conn.on_reply({"type": "websocket.accept", "subprotocol": "v1", "state": {"user_id": 7}})
    assert actions == [Accept("v1", [])]
    assert conn.receive_message("x")["state"] == {"user_id": 7}
    assert conn.disconnect_message(1000)["state"] == {"user_id": 7}


def test_send_before_accept_accepts_first():
    conn = connection()
    assert conn.on_reply({"type": "websocket.send", "text": "hi"}) == [Accept(None, []), Send(text="hi")]
    assert conn.phase is Phase.OPEN


def test_close_before_accept_rejects():
    conn = connection()
    assert conn.on_reply({"type": "websocket.close"}) == [Close(1000, "")]
    assert conn.on_reply({"type": "websocket.send", "text": "late"}) == []


def test_protocol_errors():
    conn = connection()
    with pytest.raises(InvalidMessage):
        conn.on_reply({"type": "websocket.accept", "subprotocol": "never-offered"})
    conn = connection()
    conn.on_reply({"type": "websocket.accept"})
    with pytest.raises(InvalidMessage):
        conn.on_reply({"type": "websocket.accept"})


def test_groups_are_remembered_for_cleanup():
    conn = connection()
    assert conn.on_reply({"type": "websocket.group_add", "group": "g1"}) == [GroupAdd("g1")]
    conn.on_reply({"type": "websocket.group_add", "group": "g2"})
    assert conn.on_reply({"type": "websocket.group_discard", "group": "g1"}) == [GroupDiscard("g1")]
    assert conn.groups == {"g2"}


def test_consumer_messages_are_checked_by_the_schema():
    assert SCHEMA.problem({"type": "websocket.send", "text": "a", "bytes": b"b"}) is not None
    assert SCHEMA.problem({"type": "websocket.close", "code": 1001}) is not None
    assert SCHEMA.problem({"type": "websocket.close", "code": 4001, "reason": "ok"}) is None
    assert SCHEMA.problem({"type": "websocket.group_add", "group": "bad name!"}) is not None


def auto_connection() -> Connection:
    info = ConnectionInfo("/echo/", b"", [], None, None, ["v1"])
    route, kwargs = match_route(ROUTES, info.path)
    conn = Connection(info, route, kwargs, "specific.abc!auto")
    assert conn.accept_automatically() == [Accept(None, [])]
    return conn


def test_auto_accepted_connect_says_so_and_a_normal_one_does_not():
    connect = auto_connection().connect_message()
    assert connect["accepted"] is True and SCHEMA.problem(connect) is None
    assert connection().connect_message()["accepted"] is False


def test_accept_after_auto_accept_only_sets_state_once():
    conn = auto_connection()
    assert conn.on_reply({"type": "websocket.accept", "state": {"user_id": 3}}) == []
    assert conn.receive_message("x")["state"] == {"user_id": 3}
    with pytest.raises(InvalidMessage):
        conn.on_reply({"type": "websocket.accept", "state": {"user_id": 4}})


def test_accept_after_auto_accept_cannot_choose_a_subprotocol_or_headers():
    with pytest.raises(InvalidMessage, match="auto-accepts"):
        auto_connection().on_reply({"type": "websocket.accept", "subprotocol": "v1"})
    with pytest.raises(InvalidMessage, match="auto-accepts"):
        auto_connection().on_reply({"type": "websocket.accept", "headers": [[b"x", b"y"]]})


def test_group_changes_on_a_closed_connection_are_remembered_for_cleanup_only():
    conn = connection()
    conn.on_reply({"type": "websocket.close"})
    assert conn.on_reply({"type": "websocket.group_add", "group": "late"}) == []
    assert conn.groups == {"late"}
    assert conn.on_reply({"type": "websocket.group_discard", "group": "late"}) == []
    assert conn.groups == set()
