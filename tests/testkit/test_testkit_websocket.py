"""WebSocketCommunicator: the request, the handshake, frames, JSON, groups."""

from __future__ import annotations

import json

from consumers.testing import ConsumerHarness, WebSocketCommunicator
from consumers.websocket import WebSocketConsumer


class Inspecting(WebSocketConsumer):
    """Accepts with the last offered subprotocol and tells what it saw."""

    async def connect(self, ws):
        if ws.kwargs.get("room") == "closed":
            await ws.close(code=4003)
            return
        offered = ws.message["subprotocols"]
        await ws.accept(subprotocol=offered[-1] if offered else None, headers=[[b"x-seen", b"yes"]],
                        state={"who": ws.cookies().get("who", "nobody")})

    async def receive(self, ws):
        if ws.text == "close":
            await ws.close(code=4000, reason="asked")
            return
        await ws.send(text=json.dumps({
            "path": ws.path, "kwargs": ws.kwargs, "state": ws.state, "order": ws.order,
            "echo": json.loads(ws.text) if ws.text else None}))


async def test_the_connect_carries_query_string_headers_cookies_and_subprotocols():
    seen = []

    class Recording(Inspecting):
        async def connect(self, ws):
            seen.append(ws.message)
            await super().connect(ws)

    async with WebSocketCommunicator(Recording, "/room/a/?x=1&y=%20", kwargs={"room": "a"},
                                     headers=[("User-Agent", "kit"), (b"X-Raw", b"\xff")],
                                     cookies={"who": "alice"}, subprotocols=["v1", "v2"]) as ws:
        assert await ws.connect() == (True, "v2")
        assert ws.response_headers == [[b"x-seen", b"yes"]]
    (connect,) = seen
    assert connect["path"] == "/room/a/" and connect["query_string"] == b"x=1&y=%20"
    assert [b"user-agent", b"kit"] in connect["headers"] and [b"x-raw", b"\xff"] in connect["headers"]
    assert [b"cookie", b"who=alice"] in connect["headers"]
    assert connect["subprotocols"] == ["v1", "v2"] and connect["order"] == 0


async def test_json_frames_state_and_order():
    async with WebSocketCommunicator(Inspecting, "/room/a/", kwargs={"room": "a"}, cookies={"who": "bob"}) as ws:
        await ws.connect()
        await ws.send_json_to({"n": 1})
        await ws.send_json_to({"n": 2})
        first, second = await ws.receive_json_from(), await ws.receive_json_from()
        assert first == {"path": "/room/a/", "kwargs": {"room": "a"}, "state": {"who": "bob"}, "order": 1,
                         "echo": {"n": 1}}
        assert second["order"] == 2 and second["echo"] == {"n": 2}
        assert await ws.receive_nothing()


async def test_a_rejected_handshake_and_a_close_after_accept():
    async with WebSocketCommunicator(Inspecting, "/room/closed/", kwargs={"room": "closed"}) as ws:
        assert await ws.connect() == (False, 4003)
    async with WebSocketCommunicator(Inspecting, "/room/a/", kwargs={"room": "a"}) as ws:
        await ws.connect()
        await ws.send_to(text_data="close")
        assert await ws.receive_output() == {"type": "websocket.close", "code": 4000, "reason": "asked"}


class Rooms(WebSocketConsumer):
    """Joins its room by message only (what the gateway records), or also on the layer."""

    async def connect(self, ws):
        await ws.accept()
        group = f"room.{ws.kwargs['room']}"
        if ws.kwargs.get("how") == "layer":  # as a context that joins on the layer itself
            await ws.channel_layer.group_add(group, ws.reply_channel)
        await ws._reply({"type": "websocket.group_add", "group": group})

    async def receive(self, ws):
        group = f"room.{ws.kwargs['room']}"
        if ws.text == "leave":
            await ws._reply({"type": "websocket.group_discard", "group": group})
            await ws.send(text="left")
            return
        await ws.group_send(group, {"type": "websocket.send", "text": ws.text})


async def test_group_messages_are_carried_out_and_never_returned():
    async with ConsumerHarness(Rooms, "websocket.rooms") as harness:
        alice = WebSocketCommunicator(harness, "/r/1/", kwargs={"room": "1"})
        bob = WebSocketCommunicator(harness, "/r/1/", kwargs={"room": "1", "how": "layer"})
        carol = WebSocketCommunicator(harness, "/r/2/", kwargs={"room": "2"})
        for ws in (alice, bob, carol):
            assert (await ws.connect())[0]
        assert alice.groups == {"room.1"} and bob.groups == {"room.1"}
        await alice.send_to(text_data="hello")
        assert await alice.receive_from() == "hello"  # not the websocket.group_add
        assert await bob.receive_from() == "hello"
        assert await carol.receive_nothing()
        await bob.send_to(text_data="leave")
        assert await bob.receive_from() == "left"  # the group_discard was absorbed
        await alice.send_to(text_data="again")
        assert await alice.receive_from() == "again"
        assert await bob.receive_nothing()
        await alice.disconnect()
        await carol.send_to(text_data="x")  # only carol is in room.2
        assert await carol.receive_from() == "x"
    assert "room.1" not in harness.layer.groups  # alice left every group at disconnect


async def test_binary_frames():
    class Echo(WebSocketConsumer):
        async def receive(self, ws):
            await ws.send(bytes=ws.bytes[::-1])

    async with WebSocketCommunicator(Echo, "/b/") as ws:
        await ws.connect()
        await ws.send_to(bytes_data=b"\x00\x01")
        assert await ws.receive_from() == b"\x01\x00"
