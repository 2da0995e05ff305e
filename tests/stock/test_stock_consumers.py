"""A Channels project written for Daphne, unchanged behind the gateway.

The project in ``project/`` is the Channels tutorial's chat (rooms from the
URL, ``group_add`` in connect, ``group_send`` in receive, a ``chat_message``
handler) plus a few consumers of each stock class, served by
``AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(...)))`` with
channels_redis's own layer class in its settings (and again with
``GatewayRedisChannelLayer``, the class docs/daphne.md recommends). Real redis-server, real
``gateway websocket``, real ``gateway worker``, real websockets clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
import websockets
import yaml
from websockets.exceptions import ConnectionClosed, InvalidStatus

from servers import PYTHON, Daemon, free_port, listening_gateway

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parent / "project"
ORIGIN = "http://good.example"


def project_env(redis_url: str, prefix: str, database: Path, backend: str) -> dict[str, str]:
    """What the project's settings read: the Redis and key prefix the YAML names too."""
    return {"CHAT_REDIS_URL": redis_url, "CHAT_LAYER_PREFIX": prefix, "CHAT_DATABASE": str(database),
            "CHAT_LAYER_BACKEND": backend,
            "DJANGO_SETTINGS_MODULE": "mysite.settings",
            "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])}


def prepare_database(env: dict[str, str]) -> str:
    """Migrate, create a user logged in on a session; return the session key."""
    script = """
import django; django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
user = User.objects.create_user("alice", password="pw")
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session["color"] = "green"
session.save()
print(session.session_key)
"""
    done = subprocess.run([PYTHON, "-c", script], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def start_worker(config: Path, env: dict[str, str]) -> Daemon:
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config)], env=env)
    worker.wait_for_log("Running worker for channels", timeout=60)
    return worker


@pytest.fixture(scope="module", params=["channels_redis.core.RedisChannelLayer",
                                        "gateways.core.layer.GatewayRedisChannelLayer"],
                ids=["channels_redis", "gateway_layer"])
def stack(request, redis_server, tmp_path_factory):
    directory = tmp_path_factory.mktemp("stock")
    prefix = f"st{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = directory / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "layer": {"url": redis_server.url, "prefix": prefix},
        "django": {"settings": "mysite.settings", "path": [str(PROJECT)]},
        "websocket": {
            "listen": f"127.0.0.1:{port}",
            "accept_timeout": 5,
            "grace_period": 5,
            "health": {"listen": f"127.0.0.1:{free_port()}"},
            # One route serves every URL the project's URLRouter knows.
            "routes": [{"path": "^/ws/.*$", "channel": "websocket.app"}],
        },
    }))
    env = project_env(redis_server.url, prefix, directory / "db.sqlite3", request.param)
    session_key = prepare_database(env)
    gateway = listening_gateway("websocket", config, port)
    worker = start_worker(config, env)
    state = {"port": port, "config": config, "env": env, "prefix": prefix, "session": session_key,
             "gateway": gateway, "worker": worker, "redis": redis_server}
    yield state
    state["worker"].stop()
    gateway.stop()


def connect(stack, path: str, **kwargs):
    kwargs.setdefault("origin", ORIGIN)
    kwargs.setdefault("open_timeout", 20)
    return websockets.connect(f"ws://127.0.0.1:{stack['port']}{path}", **kwargs)


async def recv_json(ws, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def group_size(stack, group: str) -> int:
    return redis.Redis.from_url(stack["redis"].url).zcard(f"{stack['prefix']}:group:{group}")


def group_send_elsewhere(stack, group: str, message: dict) -> None:
    """``channel_layer.group_send`` in another process, as a view does, with the project's layer."""
    script = ("import asyncio, sys, json, django; django.setup()\n"
              "from channels.layers import get_channel_layer\n"
              "asyncio.run(get_channel_layer().group_send(sys.argv[1], json.loads(sys.argv[2])))\n")
    done = subprocess.run([PYTHON, "-c", script, group, json.dumps(message)], env={**os.environ, **stack["env"]},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_tutorial_chat_rooms_broadcast_to_their_members_only(stack):
    async with connect(stack, "/ws/chat/lobby/") as alice, connect(stack, "/ws/chat/lobby/") as bob, \
            connect(stack, "/ws/chat/other/") as carol:
        # connect() joins before accepting, so every member is in its group once open.
        assert group_size(stack, "chat_lobby") == 2
        await alice.send(json.dumps({"message": "hello"}))
        assert await recv_json(alice) == {"message": "hello"}
        assert await recv_json(bob) == {"message": "hello"}
        await bob.send(json.dumps({"message": "hi alice"}))
        assert await recv_json(alice) == {"message": "hi alice"}
        assert await recv_json(bob) == {"message": "hi alice"}
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(carol.recv(), 0.5)


async def test_group_send_from_another_process_reaches_the_room(stack):
    """What a view does: ``channel_layer.group_send`` with the project's own layer."""
    async with connect(stack, "/ws/chat/news/") as alice, connect(stack, "/ws/chat/news/") as bob:
        group_send_elsewhere(stack, "chat_news", {"type": "chat.message", "message": "from a view"})
        assert await recv_json(alice) == {"message": "from a view"}
        assert await recv_json(bob) == {"message": "from a view"}


async def test_disconnect_runs_the_consumers_disconnect_and_leaves_the_group(stack):
    async with connect(stack, "/ws/chat/leaving/") as stay:
        async with connect(stack, "/ws/chat/leaving/"):
            assert group_size(stack, "chat_leaving") == 2
        # The tutorial's disconnect() discards the instance's channel from the group.
        await until(lambda: group_size(stack, "chat_leaving") == 1)
        await stay.send(json.dumps({"message": "anyone?"}))
        assert await recv_json(stay) == {"message": "anyone?"}
    await until(lambda: group_size(stack, "chat_leaving") == 0)


async def test_logged_in_user_and_session_from_the_session_cookie(stack):
    cookie = f"sessionid={stack['session']}"
    async with connect(stack, "/ws/whoami/", additional_headers={"Cookie": cookie}) as ws:
        assert await recv_json(ws) == {"said": "connect", "user": "alice", "users_in_db": 1,
                                       "session_color": "green"}
        await ws.send(json.dumps({"say": "again"}))
        assert (await recv_json(ws))["user"] == "alice"
    async with connect(stack, "/ws/whoami/") as anonymous:
        assert await recv_json(anonymous) == {"said": "connect", "user": None, "users_in_db": 1,
                                              "session_color": None}


async def test_scope_subprotocol_accept_headers_and_close_code(stack):
    async with connect(stack, "/ws/scope/caf%C3%A9/?a=1&b=2", subprotocols=["v1", "v2"]) as ws:
        assert ws.subprotocol == "v2"
        assert ws.response.headers["X-Chat"] == "yes"
        scope = await recv_json(ws)
        assert scope["path"] == "/ws/scope/café/"
        assert scope["raw_path"] == "/ws/scope/caf%C3%A9/"
        assert scope["query_string"] == "a=1&b=2"
        assert scope["kwargs"] == {"name": "café"}
        assert scope["client_is_local"] is True
        assert scope["server_port"] == stack["port"]
        assert scope["subprotocols"] == ["v1", "v2"]
        assert scope["has_user_agent"] is True
        assert scope["channel_name"].startswith("specific.")
        await ws.send(json.dumps({"close": 4321, "reason": "bye now"}))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 4321
        assert ws.close_reason == "bye now"


async def test_each_connection_gets_its_own_instance_and_channel_name(stack):
    async with connect(stack, "/ws/scope/one/") as first, connect(stack, "/ws/scope/two/") as second:
        assert (await recv_json(first))["channel_name"] != (await recv_json(second))["channel_name"]
    async with connect(stack, "/ws/plain/") as a, connect(stack, "/ws/plain/") as b:
        # Instance attributes are per connection, as under Daphne.
        for text in ("x", "y"):
            await a.send(text)
        await b.send("z")
        assert [await asyncio.wait_for(a.recv(), 10) for _ in range(2)] == ["1: x", "2: y"]
        assert await asyncio.wait_for(b.recv(), 10) == "1: z"


async def test_close_before_accept_rejects_the_handshake(stack):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(stack, "/ws/scope/x/?reject=1"):
            pass
    assert refused.value.response.status_code == 403
    # AllowedHostsOriginValidator, in the project's own stack, rejects a foreign origin.
    with pytest.raises(InvalidStatus) as foreign:
        async with connect(stack, "/ws/whoami/", origin="http://evil.example"):
            pass
    assert foreign.value.response.status_code == 403


async def test_sync_consumers_and_their_group_handlers(stack):
    async with connect(stack, "/ws/sync/") as sync_ws, connect(stack, "/ws/syncjson/") as json_ws:
        await sync_ws.send("text")
        assert await asyncio.wait_for(sync_ws.recv(), 10) == "text"
        await sync_ws.send(b"\x00\xff")
        assert await asyncio.wait_for(sync_ws.recv(), 10) == b"\x00\xff"
        await json_ws.send(json.dumps({"n": 21}))
        assert await recv_json(json_ws) == {"doubled": 42}
        group_send_elsewhere(stack, "sync_echo", {"type": "echo.announce", "text": "hi"})
        assert await asyncio.wait_for(sync_ws.recv(), 10) == "announced: hi"


async def test_each_connection_in_order_while_connections_run_concurrently(stack):
    async with connect(stack, "/ws/plain/") as a, connect(stack, "/ws/plain/") as b:
        for i in range(50):
            await a.send(f"a{i}")
            await b.send(f"b{i}")
        assert [await asyncio.wait_for(a.recv(), 10) for _ in range(50)] == [f"{i + 1}: a{i}" for i in range(50)]
        assert [await asyncio.wait_for(b.recv(), 10) for _ in range(50)] == [f"{i + 1}: b{i}" for i in range(50)]


async def test_a_killed_worker_recreates_the_instance_with_the_same_user(stack):
    """After a worker died without handing its connections over, the open
    connection's next message gets a new instance: it runs connect (its accept
    absorbed) with the handshake the gateway kept, so the user is still logged in."""
    cookie = f"sessionid={stack['session']}"
    async with connect(stack, "/ws/whoami/", additional_headers={"Cookie": cookie}) as ws:
        assert (await recv_json(ws))["user"] == "alice"
        stack["worker"].proc.kill()
        stack["worker"].stop()
        stack["worker"] = start_worker(stack["config"], stack["env"])
        await ws.send(json.dumps({"say": "still me?"}))
        # The new instance's connect sends its greeting, then handles the message.
        assert await recv_json(ws, 20) == {"said": "connect", "user": "alice", "users_in_db": 1,
                                           "session_color": "green"}
        assert (await recv_json(ws))["said"] == "still me?"
    assert "a new one handles a connect first" in stack["worker"].log()


async def test_a_stopped_worker_hands_a_quiet_connection_to_the_next(stack):
    """A worker stopped with SIGTERM hands its connections over: the next worker
    re-creates the instance at once, before the connection says anything, with
    the same handshake (the user is still logged in)."""
    cookie = f"sessionid={stack['session']}"
    async with connect(stack, "/ws/whoami/", additional_headers={"Cookie": cookie}) as ws:
        greeting = {"said": "connect", "user": "alice", "users_in_db": 1, "session_color": "green"}
        assert await recv_json(ws) == greeting
        assert stack["worker"].stop() == 0
        stack["worker"] = start_worker(stack["config"], stack["env"])
        # The re-created instance's connect greets again, unprompted.
        assert await recv_json(ws, 20) == greeting
        await ws.send(json.dumps({"say": "still me?"}))
        assert (await recv_json(ws))["said"] == "still me?"
    assert "a new one handles a connect first" not in stack["worker"].log()


async def test_a_gateway_kept_group_reaches_the_socket_across_a_worker_restart(stack):
    """A stock consumer may ask the gateway to keep its connection in a group
    (``websocket.group_add`` through ``send``): broadcasts of ``websocket.send``
    go straight to the socket, even while no instance exists for it."""
    async with connect(stack, "/ws/news/") as ws:
        await until(lambda: group_size(stack, "news") == 1)
        group_send_elsewhere(stack, "news", {"type": "websocket.send", "text": "breaking"})
        assert await asyncio.wait_for(ws.recv(), 10) == "breaking"
        assert stack["worker"].stop() == 0
        group_send_elsewhere(stack, "news", {"type": "websocket.send", "text": "while no worker runs"})
        assert await asyncio.wait_for(ws.recv(), 10) == "while no worker runs"
        stack["worker"] = start_worker(stack["config"], stack["env"])
    # The gateway leaves the group when the socket closes.
    await until(lambda: group_size(stack, "news") == 0)
