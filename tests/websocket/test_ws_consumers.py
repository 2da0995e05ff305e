"""The Django side without a gateway: the demo consumers and the session helpers
driven through the consumers.testing kit on an in-memory layer."""

from __future__ import annotations

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
        user = User.objects.create_user("alice", password="pw")
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
        assert await known.receive_from() == "alice"
        stranger = WebSocketCommunicator(known, "/me/")
        await stranger.connect()
        await stranger.send_to(text_data="?")
        assert await stranger.receive_from() == "anonymous"
