"""A rolling restart of ``gateway worker`` (start the new one, stop the old one)
drops no WebSocket and loses nothing: with the Channels tutorial's chat, run
unchanged with one instance per connection, and with the project's own
consumer API under a continuous echo load.

Real redis-server, real ``gateway websocket``, real ``gateway worker``
processes, real websockets clients.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
import websockets
import yaml

from servers import PYTHON, Daemon, free_port, listening_gateway

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent.parent
STOCK_PROJECT = TESTS / "stock" / "project"
sys.path.insert(0, str(TESTS / "websocket"))
sys.path.insert(0, str(TESTS / "stock"))

from test_stock_consumers import ORIGIN, group_send_elsewhere, prepare_database, project_env  # noqa: E402
from ws_stack import ORIGIN as WS_ORIGIN, start_gateway, start_gateway_worker, write_config  # noqa: E402


def start_worker(config: Path, env: dict[str, str]) -> Daemon:
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config)], env=env)
    worker.wait_for_log("Running worker for channels", timeout=60)
    return worker


async def until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture()
def chat(redis_server, tmp_path):
    """The stock tutorial chat behind one gateway, served by worker A."""
    prefix = f"ro{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "layer": {"url": redis_server.url, "prefix": prefix},
        "django": {"settings": "mysite.settings", "path": [str(STOCK_PROJECT)]},
        "websocket": {"listen": f"127.0.0.1:{port}", "accept_timeout": 5, "grace_period": 5,
                      "health": {"listen": f"127.0.0.1:{free_port()}"},
                      "routes": [{"path": "^/ws/.*$", "channel": "websocket.app"}]},
    }))
    env = project_env(redis_server.url, prefix, tmp_path / "db.sqlite3", "channels_redis.core.RedisChannelLayer")
    prepare_database(env)
    gateway = listening_gateway("websocket", config, port)
    workers = [start_worker(config, env)]
    yield {"port": port, "config": config, "env": env, "prefix": prefix, "workers": workers,
           "redis": redis.Redis.from_url(redis_server.url)}
    for worker in workers:
        worker.stop()
    gateway.stop()


def members(chat, group: str) -> set[str]:
    """The channel names in ``group``: the group's sorted set, under the layer's key."""
    return {m.decode() for m in chat["redis"].zrange(f"{chat['prefix']}:group:{group}", 0, -1)}


async def test_stock_chat_keeps_every_member_across_a_rolling_restart(chat):
    """Quiet members are re-created on the new worker by the old one's hand-over:
    every broadcast after the restart reaches each member once, and the old
    instances' channel names left their groups."""
    rooms = [f"room{i}" for i in range(3)]
    per_room = 4
    url = f"ws://127.0.0.1:{chat['port']}/ws/chat/"
    sockets = {room: [await websockets.connect(f"{url}{room}/", origin=ORIGIN, open_timeout=20)
                      for _ in range(per_room)] for room in rooms}
    # A sync consumer (WebsocketConsumer) joins its group through async_to_sync.
    sync_sockets = [await websockets.connect(f"ws://127.0.0.1:{chat['port']}/ws/sync/", origin=ORIGIN,
                                             open_timeout=20) for _ in range(2)]
    try:
        await until(lambda: len(members(chat, "sync_echo")) == 2)
        old_sync = members(chat, "sync_echo")
        old = {}
        for room in rooms:
            await until(lambda: len(members(chat, f"chat_{room}")) == per_room)
            old[room] = members(chat, f"chat_{room}")
            # One member talks before the restart; the others stay quiet throughout.
            await sockets[room][0].send(json.dumps({"message": f"before {room}"}))
            for ws in sockets[room]:
                assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"message": f"before {room}"}

        worker_a = chat["workers"][0]
        chat["workers"].append(start_worker(chat["config"], chat["env"]))
        assert await asyncio.to_thread(worker_a.stop) == 0
        chat["workers"].remove(worker_a)
        assert f"handed {len(rooms) * per_room + 2} connection(s) on websocket.app over" in worker_a.log()
        # Worker B acknowledged every one before A's instances left their groups.
        assert f"'connection taken_over': {len(rooms) * per_room + 2}" in worker_a.log()

        for room in rooms:
            # Worker B re-created every instance (its connect joined again); A's names left.
            await until(lambda: len(members(chat, f"chat_{room}")) == per_room
                        and not members(chat, f"chat_{room}") & old[room])
        await until(lambda: len(members(chat, "sync_echo")) == 2 and not members(chat, "sync_echo") & old_sync)
        for room in rooms:
            await sockets[room][1].send(json.dumps({"message": f"after {room}"}))
        for room in rooms:
            for ws in sockets[room]:
                assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"message": f"after {room}"}
        # Exactly once: a stale member or a doubled instance would bring a second copy
        # (checked below, with the sync consumer's broadcast).
        await asyncio.to_thread(group_send_elsewhere, chat, "sync_echo", {"type": "echo.announce", "text": "hi"})
        for ws in sync_sockets:
            assert await asyncio.wait_for(ws.recv(), 10) == "announced: hi"
        for ws in [*sync_sockets, *(ws for room in rooms for ws in sockets[room])]:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)
            assert ws.close_code is None, "a socket closed during the restart"
    finally:
        for ws in [*sync_sockets, *(ws for room_sockets in sockets.values() for ws in room_sockets)]:
            await ws.close()
    worker_b = chat["workers"][0]
    assert worker_b.stop() == 0
    chat["workers"].remove(worker_b)
    assert f"'connection resumed': {len(rooms) * per_room + 2}" in worker_b.log()


@pytest.fixture()
def echo(redis_server, tmp_path):
    """The project-API echo (a GatewayConsumer) behind one gateway, served by worker A."""
    config, port = write_config(tmp_path, redis_server.url)
    gateway = start_gateway(config, port)
    workers = [start_gateway_worker(config, tmp_path, ["websocket.echo"])]
    yield {"port": port, "config": config, "dir": tmp_path, "workers": workers}
    for worker in workers:
        worker.stop()
    gateway.stop()


async def test_project_api_echo_under_load_loses_nothing_in_a_rolling_restart(echo):
    """50 connections send continuously (each waits for its echo) while worker B
    starts and worker A stops: no connection drops, no message is lost."""
    connections = 50
    stop = asyncio.Event()
    counts = {"sent": 0, "echoed": 0, "lost": 0, "dropped": 0}
    longest = 0.0

    async def client(n: int) -> None:
        nonlocal longest
        try:
            async with websockets.connect(f"ws://127.0.0.1:{echo['port']}/echo/", origin=WS_ORIGIN,
                                          open_timeout=20) as ws:
                i = 0
                while not stop.is_set():
                    text = f"{n}:{i}"
                    began = time.monotonic()
                    await ws.send(text)
                    counts["sent"] += 1
                    try:
                        reply = await asyncio.wait_for(ws.recv(), 30)
                    except asyncio.TimeoutError:
                        counts["lost"] += 1
                        continue
                    assert reply == text
                    counts["echoed"] += 1
                    longest = max(longest, time.monotonic() - began)
                    i += 1
        except websockets.ConnectionClosed:
            counts["dropped"] += 1

    clients = [asyncio.create_task(client(n)) for n in range(connections)]
    await until(lambda: counts["echoed"] >= 5 * connections)
    worker_a = echo["workers"][0]
    echo["workers"].append(await asyncio.to_thread(start_gateway_worker, echo["config"], echo["dir"],
                                                   ["websocket.echo"]))
    assert await asyncio.to_thread(worker_a.stop) == 0
    echo["workers"].remove(worker_a)
    settled = counts["echoed"]
    await until(lambda: counts["echoed"] >= settled + 5 * connections)
    stop.set()
    await asyncio.gather(*clients)
    print(f"\nrolling restart, project API: {counts['echoed']} echoed, {counts['lost']} lost, "
          f"{counts['dropped']} dropped, longest wait {longest * 1000:.0f} ms")
    assert counts["dropped"] == 0
    assert counts["lost"] == 0
    assert counts["echoed"] == counts["sent"]


def test_worker_tells_systemd_when_it_runs(redis_server, tmp_path):
    """``Type=notify`` units: ``systemctl start`` of the new worker returns once
    it runs, which the rolling restart waits for before stopping the old one."""
    import socket

    config, _port = write_config(tmp_path, redis_server.url)
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(60)
        worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config),
                                           "websocket.echo"],
                        env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3"), "NOTIFY_SOCKET": address})
        try:
            assert sock.recv(100) == b"READY=1"
            assert "Running worker for channels" in worker.log()
        finally:
            assert worker.stop() == 0


async def test_stock_chat_broadcasts_during_a_rolling_restart_reach_quiet_members(chat):
    """Broadcasts sent (as a view would) while worker B starts and worker A stops
    reach every quiet member: A's instances stay in the room until B's have
    joined it. A copy may arrive twice during the overlap, none is missing."""
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[chat["env"]["CHAT_REDIS_URL"]], prefix=chat["prefix"])
    url = f"ws://127.0.0.1:{chat['port']}/ws/chat/busy/"
    sockets = [await websockets.connect(url, origin=ORIGIN, open_timeout=20) for _ in range(3)]
    received: list[list[str]] = [[] for _ in sockets]

    async def read(n: int) -> None:
        async for text in sockets[n]:
            received[n].append(json.loads(text)["message"])

    readers = [asyncio.create_task(read(n)) for n in range(len(sockets))]
    sent = 0
    stop = asyncio.Event()

    async def broadcast() -> None:
        nonlocal sent
        while not stop.is_set():
            await layer.group_send("chat_busy", {"type": "chat.message", "message": f"b{sent}"})
            sent += 1
            await asyncio.sleep(0.02)

    try:
        await until(lambda: len(members(chat, "chat_busy")) == len(sockets))
        sender = asyncio.create_task(broadcast())
        await until(lambda: all(len(r) >= 10 for r in received))
        worker_a = chat["workers"][0]
        chat["workers"].append(await asyncio.to_thread(start_worker, chat["config"], chat["env"]))
        assert await asyncio.to_thread(worker_a.stop) == 0
        chat["workers"].remove(worker_a)
        assert f"'connection taken_over': {len(sockets)}" in worker_a.log()
        settled = sent
        await until(lambda: all(f"b{settled + 10}" in r for r in received))
        stop.set()
        await sender
        await until(lambda: all(f"b{sent - 1}" in r for r in received))
        for n, got in enumerate(received):
            missing = {f"b{i}" for i in range(sent)} - set(got)
            assert not missing, f"member {n} missed {sorted(missing)}"
            assert sockets[n].close_code is None
    finally:
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
