"""A WebSocket gateway killed with SIGKILL leaves no ghosts: its connections'
consumers get `websocket.disconnect` 1006 (`lost: true`) and their group
memberships go, done by another instance or by its own restart.

Real `gateway websocket` processes on one real redis-server, real websockets
clients; the test itself is the consumer (on the layer, as a worker would be),
so it sees every message the gateways send.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid

import pytest
import websockets

from consumers.websocket import group_members
from gateways.core.config import load_config
from gateways.core.layer import build_layer, close_layer
from ws_stack import ORIGIN, start_gateway, write_config

pytestmark = pytest.mark.e2e

#: websocket.instance_timeout in these tests: short, so the clean-up comes quickly.
TIMEOUT = 3
GROUP = "ghost.lobby"
ROUTES = [{"path": r"^/ghost/(?P<user>\w+)/$", "channel": "websocket.ghost"}]


class Consumer:
    """Accepts every connection with a state, joins it to :data:`GROUP` the way
    ``ws.group_add`` does, and keeps every message it gets."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self.messages: list[dict] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            message = await self.layer.receive("websocket.ghost")
            self.messages.append(message)
            if message["type"] == "websocket.connect":
                reply = message["reply_channel"]
                await self.layer.group_add(GROUP, reply)
                await self.layer.send(reply, {"type": "websocket.accept", "state": {"user": message["kwargs"]["user"]}})
                await self.layer.send(reply, {"type": "websocket.group_add", "group": GROUP})

    def of_type(self, mtype: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == mtype]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def setup(redis_server, tmp_path):
    """Two configs for gateways on one layer prefix, the layer, and the consumer."""
    prefix = f"ghost{uuid.uuid4().hex[:6]}"
    configs = [write_config(tmp_path, redis_server.url, prefix=prefix, routes=ROUTES, instance_timeout=TIMEOUT)
               for _ in range(2)]
    layer = build_layer(load_config(str(configs[0][0])).layer)
    consumer = Consumer(layer)
    started = []
    yield configs, layer, consumer, started
    await consumer.close()
    for gateway in started:
        gateway.stop()
    await close_layer(layer)


async def until(condition, what, timeout: float = 30.0) -> None:
    """Await ``condition()`` (a coroutine function) being true; fail with ``what()``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, what()
        await asyncio.sleep(0.05)


async def connect_members(port: int, names: list[str], stack: contextlib.AsyncExitStack) -> list:
    return [await stack.enter_async_context(websockets.connect(
        f"ws://127.0.0.1:{port}/ghost/{name}/", origin=ORIGIN, open_timeout=15)) for name in names]


def reply_channels(consumer: Consumer, names: list[str]) -> set[str]:
    return {m["reply_channel"] for m in consumer.of_type("websocket.connect") if m["kwargs"]["user"] in names}


async def assert_ghosts_removed(consumer: Consumer, layer, ghosts: set[str], staying: set[str]) -> None:
    """Every ghost gets one lost disconnect with its state, and only ``staying`` stays in the group."""

    async def cleaned() -> bool:
        told = {m["reply_channel"] for m in consumer.of_type("websocket.disconnect")}
        return ghosts <= told and set(await group_members(GROUP, layer)) == staying

    await until(cleaned, lambda: f"disconnects: {consumer.of_type('websocket.disconnect')}")
    disconnects = [m for m in consumer.of_type("websocket.disconnect") if m["reply_channel"] in ghosts]
    assert len(disconnects) == len(ghosts), disconnects  # once each
    for message in disconnects:
        assert message["code"] == 1006 and message["lost"] is True, message
        assert message["state"] == {"user": message["kwargs"]["user"]}, message
    assert set(await group_members(GROUP, layer)) == staying


async def test_another_instance_cleans_up_after_a_killed_one(setup):
    ((config_a, port_a), (config_b, port_b)), layer, consumer, started = setup
    gateway_a = start_gateway(config_a, port_a)
    gateway_b = start_gateway(config_b, port_b)
    started += [gateway_a, gateway_b]
    names = [f"a{n}" for n in range(5)]
    async with contextlib.AsyncExitStack() as stack:
        await connect_members(port_a, names, stack)
        (staying_ws,) = await connect_members(port_b, ["b0"], stack)
        ghosts, staying = reply_channels(consumer, names), reply_channels(consumer, ["b0"])
        assert len(ghosts) == 5 and len(staying) == 1

        async def all_joined() -> bool:
            return len(await group_members(GROUP, layer)) == 6

        await until(all_joined, lambda: "the six members never joined")
        gateway_a.proc.kill()
        gateway_a.proc.wait()
        await assert_ghosts_removed(consumer, layer, ghosts, staying)

        # B goes on serving: its member hears the group, and it takes new connections.
        await layer.group_send(GROUP, {"type": "websocket.send", "text": "still here?"})
        assert await asyncio.wait_for(staying_ws.recv(), 10) == "still here?"
        (newcomer,) = await connect_members(port_b, ["b1"], stack)
        await staying_ws.send("hello")

        async def received() -> bool:
            return any(m.get("text") == "hello" for m in consumer.of_type("websocket.receive"))

        await until(received, lambda: "B did not hand on a message")
    # Nothing of A is left in Redis.
    redis = layer.connection(0)
    prefix = layer.prefix
    assert await redis.scard(f"{prefix}:ws:instances") <= 1  # B's own, until its clean stop
    assert not [k async for k in redis.scan_iter(match=f"{prefix}:ws:reaping:*")]


async def test_a_restarted_instance_cleans_up_after_its_previous_self(setup):
    ((config_a, port_a), _b), layer, consumer, started = setup
    first = start_gateway(config_a, port_a)
    started.append(first)
    names = [f"m{n}" for n in range(5)]
    async with contextlib.AsyncExitStack() as stack:
        await connect_members(port_a, names, stack)
        ghosts = reply_channels(consumer, names)

        async def all_joined() -> bool:
            return len(await group_members(GROUP, layer)) == 5

        await until(all_joined, lambda: "the five members never joined")
        first.proc.kill()
        first.proc.wait()
    again = start_gateway(config_a, port_a)
    started.append(again)
    await assert_ghosts_removed(consumer, layer, ghosts, staying=set())
    async with contextlib.AsyncExitStack() as stack:  # and it serves
        await connect_members(port_a, ["after"], stack)
        assert len(await group_members(GROUP, layer)) == 1


async def test_an_instance_taken_for_dead_closes_its_connections_when_it_wakes(setup):
    """A frozen instance (SIGSTOP) is reaped like a dead one; when it runs again
    it closes the connections whose consumers were told they were lost (1012,
    clients reconnect), and sends no second disconnect."""
    ((config_a, port_a), (config_b, port_b)), layer, consumer, started = setup
    gateway_a = start_gateway(config_a, port_a)
    gateway_b = start_gateway(config_b, port_b)
    started += [gateway_a, gateway_b]
    names = ["f0", "f1"]
    async with contextlib.AsyncExitStack() as stack:
        clients = await connect_members(port_a, names, stack)
        ghosts = reply_channels(consumer, names)

        async def all_joined() -> bool:
            return len(await group_members(GROUP, layer)) == 2

        await until(all_joined, lambda: "never joined")
        gateway_a.proc.send_signal(signal.SIGSTOP)
        try:
            await assert_ghosts_removed(consumer, layer, ghosts, staying=set())
        finally:
            gateway_a.proc.send_signal(signal.SIGCONT)
        for client in clients:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), 30)
            assert closed.value.rcvd.code == 1012, closed.value
    # A serves again, and its new connection is recorded: nothing more reached the consumer.
    async with contextlib.AsyncExitStack() as stack:
        await connect_members(port_a, ["f2"], stack)

    async def three_told() -> bool:
        return len(consumer.of_type("websocket.disconnect")) >= 3

    await until(three_told, lambda: consumer.of_type("websocket.disconnect"))
    disconnects = consumer.of_type("websocket.disconnect")
    assert sorted(m["kwargs"]["user"] for m in disconnects) == ["f0", "f1", "f2"], disconnects
    assert gateway_a.proc.poll() is None, gateway_a.log()


async def test_a_clean_stop_leaves_nothing_to_reap(setup):
    """SIGTERM: the gateway's own disconnects (1001), and its records gone with it."""
    ((config_a, port_a), _b), layer, consumer, started = setup
    gateway = start_gateway(config_a, port_a)
    started.append(gateway)
    async with contextlib.AsyncExitStack() as stack:
        await connect_members(port_a, ["x0", "x1"], stack)

        async def joined() -> bool:
            return len(await group_members(GROUP, layer)) == 2

        await until(joined, lambda: "never joined")
        assert await asyncio.to_thread(gateway.stop) == 0, gateway.log()  # the clients answer the close

    async def told() -> bool:
        return len(consumer.of_type("websocket.disconnect")) == 2

    await until(told, lambda: consumer.messages)
    assert all("lost" not in m for m in consumer.of_type("websocket.disconnect"))
    redis = layer.connection(0)
    assert await redis.scard(f"{layer.prefix}:ws:instances") == 0, gateway.log()
    assert not [k async for k in redis.scan_iter(match=f"{layer.prefix}:ws:*")]


async def test_a_dead_slack_instances_claims_expire(redis_server):
    """Slack dedup claims are not per instance: a claim (``pending``) its
    instance never finished expires by itself, so a retry after the instance
    died is handed off by another; ``done`` marks expire after their ttl."""
    from gateways.slack.dedup import PENDING_TTL, RedisDedup

    prefix = f"ghost{uuid.uuid4().hex[:6]}"
    dead, other = (RedisDedup(redis_server.url, prefix, ttl=600) for _ in range(2))
    try:
        assert await dead.claim("Ev1") == "new"
        assert await dead.claim("Ev2") == "new"
        await dead.done("Ev2")
        # The instance dies here: no done, no release for Ev1.
        assert await other.claim("Ev1") == "busy"
        assert 0 < await other.redis.ttl(f"{prefix}:slack:event:Ev1") <= PENDING_TTL
        assert 0 < await other.redis.ttl(f"{prefix}:slack:event:Ev2") <= 600
        await other.redis.pexpire(f"{prefix}:slack:event:Ev1", 1)  # as PENDING_TTL later

        async def claimable() -> bool:
            return await other.redis.exists(f"{prefix}:slack:event:Ev1") == 0

        await until(claimable, lambda: "the claim never expired")
        assert await other.claim("Ev1") == "new"
    finally:
        await dead.close()
        await other.close()
