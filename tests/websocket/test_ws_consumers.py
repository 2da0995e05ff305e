"""The Django side without a gateway: the demo consumers and the session helpers
driven through the consumers.testing kit on an in-memory layer."""

from __future__ import annotations

import json

import pytest

from consumers.testing import ConsumerHarness, WebSocketCommunicator
from consumers.websocket import WebSocketConsumer, get_user, session_state


@pytest.fixture(scope="module")
def django_settings():
    """tests/conftest.py configured Django with the demo settings; add the tables."""
    from django.core.management import call_command

    call_command("migrate", verbosity=0, run_syncdb=True)


async def test_echo_consumer_echoes_text_and_bytes(django_settings):
    from demo.websocket_consumers import EchoConsumer

    async with WebSocketCommunicator(EchoConsumer, "/echo/", channel="websocket.echo") as client:
        assert await client.connect() == (True, None)
        await client.send_to(text_data="hi")
        assert await client.receive_output() == {"type": "websocket.send", "text": "hi"}
        await client.send_to(bytes_data=b"\x00")
        assert await client.receive_from() == b"\x00"


async def test_chat_consumer_reaches_the_room_only(django_settings):
    from demo.websocket_consumers import ChatConsumer

    async with ConsumerHarness(ChatConsumer, "websocket.chat") as harness:
        alice = WebSocketCommunicator(harness, "/chat/a/", kwargs={"room": "a"})
        bob = WebSocketCommunicator(harness, "/chat/a/", kwargs={"room": "a"})
        carol = WebSocketCommunicator(harness, "/chat/b/", kwargs={"room": "b"})
        for client in (alice, bob, carol):
            await client.connect()
        await alice.send_to(text_data="hello a")
        assert await alice.receive_from() == "hello a"
        assert await bob.receive_from() == "hello a"
        assert await carol.receive_nothing()


class Fragile(WebSocketConsumer):
    async def receive(self, ws):
        if ws.text == "boom":
            raise ValueError("on purpose")
        await ws.send(text=f"{ws.order}:{ws.text}")


async def test_a_raising_handler_is_counted_and_the_instance_goes_on(django_settings):
    async with WebSocketCommunicator(Fragile, "/f/", raise_errors=False) as client:
        await client.connect()
        await client.send_to(text_data="boom")
        await client.send_to(text_data="next")
        assert await client.receive_from() == "2:next"
        await client.harness.deliver({"type": "websocket.unknown_thing"}, validate=False)
        await client.send_to(text_data="still")
        assert await client.receive_from() == "3:still"
    assert [str(e) for e in client.errors] == ["on purpose"]
    assert client.stats["failed"] == 1 and client.stats["unhandled"] == 1
    assert Fragile.stats["failed"] == 0  # the class's own counters are not the test's


class WhoAmI(WebSocketConsumer):
    async def connect(self, ws):
        await ws.accept(state=await session_state(ws))

    async def receive(self, ws):
        user = await get_user(ws)
        await ws.send(text=getattr(user, "username", "") or "anonymous")


async def test_session_and_user_come_from_the_connect_cookie_and_stay_in_state(django_settings):
    from asgiref.sync import sync_to_async
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore

    def login() -> str:
        user = User.objects.create_user("ws-session-alice", password="pw")
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        return session.session_key

    key = await sync_to_async(login)()
    async with WebSocketCommunicator(WhoAmI, "/me/", cookies={"sessionid": key}) as known:
        assert (await known.connect())[0]
        assert known.state["session_key"] == key and "user_id" in known.state
        await known.send_to(text_data="?")
        assert await known.receive_from() == "ws-session-alice"
        stranger = WebSocketCommunicator(known, "/me/")
        await stranger.connect()
        await stranger.send_to(text_data="?")
        assert await stranger.receive_from() == "anonymous"
    # The database outlives this test: leave no user behind for the next.
    await sync_to_async(User.objects.filter(username="ws-session-alice").delete)()


# -- groups: names, effect on return, members ------------------------------------


def test_group_name_is_valid_deterministic_and_keeps_different_parts_apart():
    from consumers.websocket import GROUP_NAME, group_name
    from gateways.core.specs import SPECS_DIR

    # The consumer's rule is the spec's rule.
    schema = json.loads((SPECS_DIR / "websocket.schema.json").read_text())
    assert GROUP_NAME.pattern == schema["$defs"]["group"]["pattern"]
    assert group_name("chat", "lobby") == "chat.lobby"
    assert group_name("chat", "my_room") == "chat.my_room"
    assert group_name("chat", "café") == "chat.caf-c3-a9"
    assert group_name("chat", 42) == "chat.42"
    cases = [("chat", "a.b"), ("chat.a", "b"), ("chat", "a", "b"), ("chat", "a-2eb"), ("chat", "a-b"),
             ("chat", "ü" * 300), ("chat", "ü" * 299 + "u"), ("chat", "x" * 300), ("chat", "x" * 301),
             ("chat", "x" * 94), ("chat", "x" * 95), ("chat", ""), ("chat", "日本語"), ("chat", "a b/c?d")]
    names = [group_name(*parts) for parts in cases]
    assert len(set(names)) == len(names)
    for parts, name in zip(cases, names):
        assert GROUP_NAME.match(name), name
        assert group_name(*parts) == name
    assert len(group_name("chat", "x" * 94)) == 99 and "--" not in group_name("chat", "x" * 94)
    assert len(names[8]) == 99 and "--" in names[8]  # shortened, with the hash
    with pytest.raises(ValueError):
        group_name("")


async def test_group_add_is_in_effect_when_it_returns_and_bad_names_are_refused(django_settings):
    from consumers.websocket import InvalidGroupName, group_members

    seen: dict[str, object] = {}

    class Joiner(WebSocketConsumer):
        async def connect(self, ws):
            await ws.accept()
            await ws.group_add("room.a")
            # No gateway has carried out the websocket.group_add yet: the layer already has it.
            seen["members"] = await ws.group_members("room.a")
            await ws.broadcast("room.a", text="joined")
            for bad in ("room.ü", "x" * 100, "", "room\n"):
                with pytest.raises(InvalidGroupName, match="group_name"):
                    await ws.broadcast(bad, text="never")
            with pytest.raises(InvalidGroupName):
                await ws.group_add("room a")

        async def receive(self, ws):
            await ws.group_discard("room.a")
            seen["after"] = await ws.group_members("room.a")
            await ws.send(text="left")

    async with ConsumerHarness(Joiner, "joiner") as harness:
        client = WebSocketCommunicator(harness, "/j/")
        assert (await client.connect())[0]
        assert seen["members"] == [client.reply_channel]
        assert await client.receive_output() == {"type": "websocket.send", "text": "joined"}
        assert await group_members("room.a", harness.layer) == [client.reply_channel]
        await client.send_to(text_data="leave")
        assert await client.receive_from() == "left"
        assert seen["after"] == []
        assert harness.stats["failed"] == 0


async def test_accept_on_an_auto_accepted_connection_only_sets_state(django_settings):
    from consumers.websocket import WebSocketContext

    class Consumer(WebSocketConsumer):
        pass

    async with ConsumerHarness(Consumer, "auto") as harness:
        reply_channel = await harness.new_reply_channel()
        ws = WebSocketContext(_Stub(harness.layer),
                              {"type": "websocket.connect", "reply_channel": reply_channel, "accepted": True})
        assert ws.accepted
        await ws.accept()  # nothing to complete, nothing sent
        assert await harness.nothing_sent(reply_channel)
        await ws.accept(state={"user_id": 1})
        assert await harness.sent(reply_channel) == {"type": "websocket.accept", "state": {"user_id": 1}}
        with pytest.raises(ValueError, match="auto-accepts"):
            await ws.accept(subprotocol="v1")


class _Stub:
    """Just what a MessageContext takes from its consumer."""

    def __init__(self, layer) -> None:
        self.channel_layer = layer
