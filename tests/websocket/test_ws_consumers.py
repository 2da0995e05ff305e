"""The Django side without a gateway: the demo consumers and the session helpers
driven through consumers.testing on an in-memory layer."""

from __future__ import annotations

import pytest

from consumers.testing import ConsumerHarness
from consumers.websocket import WebSocketConsumer, WebSocketTestClient, get_user, session_state


@pytest.fixture(scope="module")
def django_settings():
    """tests/conftest.py configured Django with the demo settings; add the tables."""
    from django.core.management import call_command

    call_command("migrate", verbosity=0, run_syncdb=True)


async def test_echo_consumer_echoes_text_and_bytes(django_settings):
    from demo.websocket_consumers import EchoConsumer

    async with ConsumerHarness(EchoConsumer, "websocket.echo") as harness:
        client = WebSocketTestClient(harness, "/echo/")
        assert (await client.connect())["type"] == "websocket.accept"
        await client.send(text="hi")
        assert await client.receive() == {"type": "websocket.send", "text": "hi"}
        await client.send(bytes=b"\x00")
        assert await client.receive() == {"type": "websocket.send", "bytes": b"\x00"}


async def test_chat_consumer_reaches_the_room_only(django_settings):
    from demo.websocket_consumers import ChatConsumer

    async with ConsumerHarness(ChatConsumer, "websocket.chat") as harness:
        alice = WebSocketTestClient(harness, "/chat/a/", kwargs={"room": "a"})
        bob = WebSocketTestClient(harness, "/chat/a/", kwargs={"room": "a"})
        carol = WebSocketTestClient(harness, "/chat/b/", kwargs={"room": "b"})
        for client in (alice, bob, carol):
            await client.connect()
        await alice.send(text="hello a")
        assert (await alice.receive())["text"] == "hello a"
        assert (await bob.receive())["text"] == "hello a"
        assert await harness.nothing_sent(carol.reply_channel)


class Fragile(WebSocketConsumer):
    async def receive(self, ws):
        if ws.text == "boom":
            raise ValueError("on purpose")
        await ws.send(text=f"{ws.order}:{ws.text}")


async def test_a_raising_handler_is_counted_and_the_instance_goes_on(django_settings):
    async with ConsumerHarness(Fragile, "fragile") as harness:
        client = WebSocketTestClient(harness, "/f/")
        await client.connect()
        await client.send(text="boom")
        await client.send(text="next")
        assert (await client.receive())["text"] == "2:next"
        await harness.deliver({"type": "websocket.unknown_thing"})
        await client.send(text="still")
        assert (await client.receive())["text"] == "3:still"
    assert Fragile.stats["failed"] == 1 and Fragile.stats["unhandled"] == 1


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
    async with ConsumerHarness(WhoAmI, "whoami") as harness:
        known = WebSocketTestClient(harness, "/me/", headers=[("Cookie", f"sessionid={key}")])
        accept = await known.connect()
        assert accept["state"]["session_key"] == key and "user_id" in accept["state"]
        await known.send(text="?")
        assert (await known.receive())["text"] == "alice"
        stranger = WebSocketTestClient(harness, "/me/")
        await stranger.connect()
        await stranger.send(text="?")
        assert (await stranger.receive())["text"] == "anonymous"
