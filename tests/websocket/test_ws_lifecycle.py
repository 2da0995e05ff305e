"""Gateway lifecycle end to end: SIGTERM drain, routing refusals, Redis going away."""

from __future__ import annotations

import asyncio
import sys

import pytest
import websockets
import yaml
from websockets.exceptions import ConnectionClosed, InvalidStatus

from servers import Daemon, wait_for_group
from ws_stack import ORIGIN, PROJECT, REPO, start_gateway, start_worker, write_config

pytestmark = pytest.mark.e2e


def connect(port: int, path: str, **kwargs):
    return websockets.connect(f"ws://127.0.0.1:{port}{path}", origin=ORIGIN, open_timeout=15, **kwargs)


async def test_sigterm_closes_connections_1001_and_exits_0(redis_server, tmp_path):
    config, port = write_config(tmp_path, redis_server.url)
    gateway = start_gateway(config, port)
    worker = start_worker(config)
    try:
        async with connect(port, "/echo/") as ws:
            await ws.send("before")
            assert await asyncio.wait_for(ws.recv(), 10) == "before"
            gateway.proc.terminate()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 15)
            assert ws.close_code == 1001
        assert await asyncio.to_thread(gateway.proc.wait, 15) == 0
        assert "websocket gateway stopped" in gateway.log()
    finally:
        gateway.stop()
        worker.stop()


async def test_unrouted_path_gets_404(redis_server, tmp_path):
    config, port = write_config(tmp_path, redis_server.url,
                                routes=[{"path": "^/echo/$", "channel": "websocket.echo"}])
    gateway = start_gateway(config, port)
    try:
        with pytest.raises(InvalidStatus) as info:
            async with connect(port, "/nowhere/"):
                pass
        assert info.value.response.status_code == 404
    finally:
        gateway.stop()


async def test_redis_stopped_and_restarted_under_live_connections(private_redis, tmp_path):
    """While Redis is down a frame cannot be handed over: the client is told
    with 1013, not ignored. Connections that stay idle through the outage work
    again afterwards, rooms included (the gateway re-adds group members)."""
    config, port = write_config(tmp_path, private_redis.url)
    gateway = start_gateway(config, port)
    worker = Daemon("worker", [sys.executable, "-m", "gateways", "worker", "--config", str(config),
                               "websocket.echo", "websocket.chat"],
                    env={"PYTHONPATH": f"{PROJECT}:{REPO / 'example'}", "DEMO_DATABASE": str(tmp_path / "db")})
    worker.wait_for_log("Running worker for channels")
    try:
        async with connect(port, "/echo/") as idle, connect(port, "/echo/") as talker, \
                connect(port, "/chat/r/") as alice, connect(port, "/chat/r/") as bob:
            await idle.send("warm up")
            assert await asyncio.wait_for(idle.recv(), 10) == "warm up"
            prefix = yaml.safe_load(config.read_text())["layer"]["prefix"]
            await wait_for_group(private_redis.url, prefix, "chat.r", 2)  # both in the room before the outage
            private_redis.stop()
            await talker.send("into the void")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(talker.recv(), 15)
            assert talker.close_code == 1013
            assert _health(config) == 503  # the layer is down: not healthy
            private_redis.start()
            # Reconnection is with backoff; keep asking until the echo comes back.
            for _attempt in range(40):
                await idle.send("after restart")
                try:
                    assert await asyncio.wait_for(idle.recv(), 1) == "after restart"
                    break
                except asyncio.TimeoutError:
                    continue
            else:
                pytest.fail(f"no echo after Redis came back\n{gateway.log()}\n{worker.log()}")
            # Drain any duplicate echoes from the retry loop.
            while True:
                try:
                    await asyncio.wait_for(idle.recv(), 0.5)
                except asyncio.TimeoutError:
                    break
            await alice.send("room survived")
            assert await asyncio.wait_for(bob.recv(), 10) == "room survived"
        assert "channel layer available again" in gateway.log()
        assert _health(config) == 200
    finally:
        gateway.stop()
        worker.stop()


async def test_max_connections_refuses_with_503_and_json_logs(redis_server, tmp_path):
    import json

    from servers import wait_for_port

    config, port = write_config(tmp_path, redis_server.url, max_connections=2,
                                routes=[{"path": "^/auto/$", "channel": "websocket.nobody", "auto_accept": True}])
    gateway = Daemon("websocket", [sys.executable, "-m", "gateways", "websocket", "--config", str(config),
                                   "--log-json"])
    wait_for_port(port, timeout=20)
    try:
        async with connect(port, "/auto/"), connect(port, "/auto/"):
            with pytest.raises(InvalidStatus) as info:
                async with connect(port, "/auto/"):
                    pass
            assert info.value.response.status_code == 503
        for _attempt in range(50):  # the slots free up once the server has seen the closes
            try:
                async with connect(port, "/auto/") as again:
                    await again.ping()
                break
            except InvalidStatus:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("connection slots were not freed after the clients closed")
    finally:
        gateway.stop()
    lines = [json.loads(line) for line in gateway.log().splitlines() if line.strip()]
    assert any(line["message"].startswith("listening on ws://") for line in lines)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)


async def test_keepalive_closes_a_silent_client_1011_and_keeps_a_live_one(redis_server, tmp_path):
    config, port = write_config(tmp_path, redis_server.url, ping_interval=0.3, ping_timeout=0.5,
                                routes=[{"path": "^/auto/$", "channel": "websocket.nobody", "auto_accept": True}])
    gateway = start_gateway(config, port)
    try:
        async with connect(port, "/auto/", ping_interval=None) as silent, \
                connect(port, "/auto/", ping_interval=None) as alive:
            silent.transport.pause_reading()  # it can no longer answer the server's pings
            # Deliberate: several ping rounds (0.3 s apart, 0.5 s to answer) pass unanswered;
            # nothing the paused client can observe marks them.
            await asyncio.sleep(2.5)
            silent.transport.resume_reading()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(silent.recv(), 10)
            assert silent.close_code == 1011
            await alive.ping()  # answered pings kept this one open through several rounds
    finally:
        gateway.stop()


def _health(config) -> int:
    import urllib.error
    import urllib.request

    listen = yaml.safe_load(config.read_text())["websocket"]["health"]["listen"]
    try:
        with urllib.request.urlopen(f"http://{listen}/healthz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
