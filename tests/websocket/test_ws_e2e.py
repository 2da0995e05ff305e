"""End to end: real `gateway websocket` processes, a real runworker, real Redis, real clients."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from servers import wait_for_group
from ws_stack import ORIGIN, start_gateway, start_worker, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    """Two gateways sharing one layer prefix, and one worker."""
    directory = tmp_path_factory.mktemp("ws")
    first, port1 = write_config(directory, redis_server.url, prefix="wse2e")
    second, port2 = write_config(directory, redis_server.url, prefix="wse2e")
    gateways = [start_gateway(first, port1), start_gateway(second, port2)]
    worker = start_worker(first)
    yield {"ports": (port1, port2), "gateways": gateways, "worker": worker, "config": first,
           "redis": redis_server.url}
    worker.stop()
    for gateway in gateways:
        gateway.stop()


def url(port: int, path: str) -> str:
    return f"ws://127.0.0.1:{port}{path}"


def connect(port: int, path: str, **kwargs):
    kwargs.setdefault("origin", ORIGIN)
    kwargs.setdefault("open_timeout", 15)
    return websockets.connect(url(port, path), **kwargs)


async def test_echo_text_and_binary(stack):
    port = stack["ports"][0]
    async with connect(port, "/echo/") as ws:
        for i in range(20):
            await ws.send(f"message {i}")
            assert await asyncio.wait_for(ws.recv(), 10) == f"message {i}"
        await ws.send(b"\x00\xffbinary")
        assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\xffbinary"


async def test_chat_room_spans_two_gateway_processes(stack):
    port1, port2 = stack["ports"]
    async with connect(port1, "/chat/lobby/") as alice, connect(port2, "/chat/lobby/") as bob, \
            connect(port2, "/chat/other/") as carol:
        await wait_for_group(stack["redis"], "wse2e", "chat.lobby", 2)
        await alice.send("hello from gateway 1")
        assert await asyncio.wait_for(alice.recv(), 10) == "hello from gateway 1"
        assert await asyncio.wait_for(bob.recv(), 10) == "hello from gateway 1"
        await bob.send("hello from gateway 2")
        assert await asyncio.wait_for(alice.recv(), 10) == "hello from gateway 2"
        assert await asyncio.wait_for(bob.recv(), 10) == "hello from gateway 2"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(carol.recv(), 0.5)


async def test_closed_connection_leaves_its_rooms(stack, redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    members = lambda: client.zcard("wse2e:group:chat.leaving")  # noqa: E731
    port1, port2 = stack["ports"]
    async with connect(port1, "/chat/leaving/") as stay:
        async with connect(port2, "/chat/leaving/"):
            await _until(lambda: members() == 2)
        await _until(lambda: members() == 1)
        await stay.send("anyone?")
        assert await asyncio.wait_for(stay.recv(), 10) == "anyone?"
    await _until(lambda: members() == 0)


async def _until(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_consumer_that_rejects_gets_403(stack):
    with pytest.raises(InvalidStatus) as info:
        async with connect(stack["ports"][0], "/reject/"):
            pass
    assert info.value.response.status_code == 403


async def test_state_order_kwargs_subprotocol_and_headers(stack):
    async with connect(stack["ports"][0], "/state/alice/?x=1", subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response.headers["x-demo"] == "yes"
        for i in range(1, 4):
            await ws.send(f"m{i}")
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply == {"order": i, "state": {"user": "alice", "query": "x=1"},
                             "kwargs": {"user": "alice"}, "path": "/state/alice/", "text": f"m{i}"}


async def test_handler_error_does_not_kill_the_consumer(stack):
    async with connect(stack["ports"][0], "/state/bob/") as ws:
        await ws.send("boom")
        await ws.send("after")
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["text"] == "after" and reply["order"] == 2
    assert "handler failure on purpose" in stack["worker"].log()


async def test_invalid_consumer_message_closes_1008_and_gateway_keeps_running(stack):
    port = stack["ports"][0]
    async with connect(port, "/state/eve/") as ws:
        await ws.send("bad")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1008
    assert "invalid message" in stack["gateways"][0].log()
    async with connect(port, "/echo/") as ws:
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), 10) == "still here"


async def test_oversized_frame_closes_1009(stack):
    async with connect(stack["ports"][0], "/echo/") as ws:
        await ws.send("x" * 70000)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1009


async def test_disallowed_origin_gets_403(stack):
    with pytest.raises(InvalidStatus) as info:
        async with connect(stack["ports"][0], "/echo/", origin="http://evil.example"):
            pass
    assert info.value.response.status_code == 403


async def test_unanswered_connect_gets_503(stack):
    with pytest.raises(InvalidStatus) as info:
        async with connect(stack["ports"][0], "/silent/"):
            pass
    assert info.value.response.status_code == 503


async def test_auto_accept_route_opens_without_a_consumer(stack):
    async with connect(stack["ports"][0], "/auto/") as ws:
        await ws.ping()


async def test_every_message_the_gateway_emits_matches_the_schema(stack):
    async with connect(stack["ports"][0], "/anything/else?q=1", subprotocols=["p1"]) as ws:
        await ws.send("text frame")
        assert await asyncio.wait_for(ws.recv(), 10) == "text frame"
        await ws.send(b"bytes frame")
        assert await asyncio.wait_for(ws.recv(), 10) == b"bytes frame"


def _metrics(config) -> str:
    import yaml

    listen = yaml.safe_load(config.read_text())["websocket"]["health"]["listen"]
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
        return response.read().decode()


async def test_health_and_metrics_endpoints(stack):
    import yaml

    async with connect(stack["ports"][0], "/echo/") as ws:  # a connect to count, whatever ran before
        await ws.send("counted")
        assert await asyncio.wait_for(ws.recv(), 10) == "counted"
    listen = yaml.safe_load(stack["config"].read_text())["websocket"]["health"]["listen"]
    with urllib.request.urlopen(f"http://{listen}/healthz", timeout=5) as response:
        assert json.loads(response.read())["healthy"] is True
    metrics = _metrics(stack["config"])
    assert 'gateway_messages_in_total{type="websocket.connect"}' in metrics
    assert "gateway_layer_send_seconds_bucket" in metrics
