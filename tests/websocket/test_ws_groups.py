"""Groups, auto-accept and presence end to end: two real `gateway websocket`
processes on one Redis, a real `gateway worker` (which handles connections
concurrently, where races show), real websockets clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from urllib.parse import quote

import pytest
import websockets

from consumers.websocket import group_members, group_name
from gateways.core.config import load_config
from gateways.core.layer import build_layer, close_layer
from ws_stack import ORIGIN, start_gateway, start_gateway_worker, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    """Two gateways sharing one layer prefix, and one `gateway worker`."""
    directory = tmp_path_factory.mktemp("wsgroups")
    first, port1 = write_config(directory, redis_server.url, prefix="wsgroups")
    second, port2 = write_config(directory, redis_server.url, prefix="wsgroups")
    gateways = [start_gateway(first, port1), start_gateway(second, port2)]
    worker = start_gateway_worker(first, directory)
    yield {"ports": (port1, port2), "gateways": gateways, "worker": worker, "config": first}
    worker.stop()
    for gateway in gateways:
        gateway.stop()


@pytest.fixture
async def layer(stack):
    """The layer as Django code in another process sees it."""
    built = build_layer(load_config(str(stack["config"])).layer)
    yield built
    await close_layer(built)


def connect(port: int, path: str, **kwargs):
    return websockets.connect(f"ws://127.0.0.1:{port}{quote(path)}", origin=ORIGIN, open_timeout=15, **kwargs)


async def recv(ws, timeout: float = 10) -> str:
    return await asyncio.wait_for(ws.recv(), timeout)


async def who(ws) -> dict:
    await ws.send("who")
    while True:  # skip broadcasts that are not the answer
        text = await recv(ws)
        if text.startswith("{"):
            return json.loads(text)


async def until(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_broadcast_right_after_group_add_reaches_the_joiner_in_every_room(stack):
    """Each connection's consumer accepts, joins its own room and broadcasts
    "joined" to it in the same handler: the joiner must get it, every time."""
    ports = stack["ports"]

    async def join(n: int) -> str:
        async with connect(ports[n % 2], f"/ws/chat/race{n}/") as ws:
            return await recv(ws)

    results = await asyncio.gather(*(join(n) for n in range(30)))
    assert results == ["joined"] * 30


async def test_non_ascii_and_overlong_room_names_work_and_stay_apart(stack):
    port1, port2 = stack["ports"]
    long_a, long_b = "é" * 299 + "a", "é" * 299 + "b"  # the same first 65 encoded characters
    async with contextlib.AsyncExitStack() as clients:
        alice = await clients.enter_async_context(connect(port1, "/ws/chat/café/"))
        assert await recv(alice) == "joined"
        bob = await clients.enter_async_context(connect(port2, "/ws/chat/café/"))
        assert await recv(bob) == "joined"
        assert await recv(alice) == "joined"  # bob's, through the other gateway
        await alice.send("hello café")
        assert await recv(bob) == "hello café" and await recv(alice) == "hello café"

        carol = await clients.enter_async_context(connect(port1, f"/ws/chat/{long_a}/"))
        dave = await clients.enter_async_context(connect(port2, f"/ws/chat/{long_b}/"))
        assert await recv(carol) == "joined" and await recv(dave) == "joined"
        seen_by_carol, seen_by_dave = await who(carol), await who(dave)
        assert seen_by_carol["group"] == group_name("room", long_a) != seen_by_dave["group"]
        assert len(seen_by_carol["group"]) <= 99
        assert seen_by_carol["members"] == [seen_by_carol["me"]]
        assert seen_by_dave["members"] == [seen_by_dave["me"]]

        await alice.send("raw")  # the unencoded name is refused with a message that says what to do
        refusal = await recv(alice)
        assert refusal.startswith("refused: invalid group name") and "group_name(" in refusal


async def test_members_are_listed_across_gateway_instances_and_leave_on_close(stack, layer):
    port1, port2 = stack["ports"]
    async with connect(port1, "/ws/chat/presence/") as alice, connect(port2, "/ws/chat/elsewhere/") as carol:
        assert await recv(alice) == "joined" and await recv(carol) == "joined"
        async with connect(port2, "/ws/chat/presence/") as bob:
            assert await recv(bob) == "joined"
            me_bob = (await who(bob))["me"]
            seen = await who(alice)
            assert seen["members"] == [seen["me"], me_bob]  # earliest joined first
            # Django code in another process reads the same list.
            assert await group_members(group_name("room", "presence"), layer) == [seen["me"], me_bob]
        # bob's gateway leaves his groups when he closes.
        await until(lambda: _members_are(layer, "presence", [seen["me"]]))
        elsewhere = await who(carol)
        assert elsewhere["members"] == [elsewhere["me"]]


async def _members_are(layer, room: str, expected: list[str]) -> bool:
    return await group_members(group_name("room", room), layer) == expected


async def test_group_add_for_a_connection_already_gone_is_undone_by_its_gateway(stack, layer):
    """A consumer that joins a connection to a group after it closed (a slow
    handler) leaves no member behind: the gateway removes it on the message."""
    async with connect(stack["ports"][0], "/ws/chat/late/") as ws:
        assert await recv(ws) == "joined"
        gone = (await who(ws))["me"]
    group = group_name("room", "late")
    await until(lambda: _members_are(layer, "late", []))
    # What ws.group_add does, too late: join on the layer, then tell the gateway.
    await layer.group_add(group, gone)
    assert await group_members(group, layer) == [gone]
    await layer.send(gone, {"type": "websocket.group_add", "group": group})
    await until(lambda: _members_are(layer, "late", []))


async def test_client_gone_before_the_accept_leaves_no_member_and_gets_a_disconnect(stack, layer):
    """The consumer joins the room before accepting; the client gives up
    before the accept comes. The gateway must still leave the room and tell
    the consumer, though websockets never hands it that connection."""
    group = group_name("slow", "quitter")

    async def attempt() -> None:
        async with connect(stack["ports"][0], "/slow/quitter/"):
            pass

    opening = asyncio.ensure_future(attempt())
    await until(lambda: _has_members(layer, group))
    opening.cancel()  # the client closes its TCP connection mid-handshake
    with pytest.raises(asyncio.CancelledError):
        await opening
    await layer.send("slowaccept.go", {"type": "go"})
    done = await asyncio.wait_for(layer.receive("slowaccept.done"), 10)
    assert done["code"] == 1006
    await until(lambda: _no_members(layer, group))


async def _has_members(layer, group: str) -> bool:
    return bool(await group_members(group, layer))


async def _no_members(layer, group: str) -> bool:
    return not await group_members(group, layer)


async def test_auto_accept_with_the_default_connect_stays_open(stack):
    """The echo consumer keeps the default connect(), which accepts: on an
    auto-accepting route that must not be a second handshake (closed 1008)."""
    async with connect(stack["ports"][0], "/auto-echo/") as ws:
        for n in range(3):
            await ws.send(f"m{n}")
            assert await recv(ws) == f"m{n}"  # replies after the consumer's accept
    assert ws.close_code == 1000  # closed by us, not by the gateway


async def test_auto_accepted_connection_gets_its_state_from_accept(stack):
    async with connect(stack["ports"][1], "/auto-state/zoe/") as ws:
        assert await recv(ws) == "ready"  # sent after accept(state=...): later frames carry the state
        await ws.send("state?")
        assert json.loads(await recv(ws)) == {"user": "zoe", "accepted": True}


async def test_auto_accepted_connect_matches_the_schema(stack):
    async with connect(stack["ports"][0], "/auto-check/") as ws:
        await ws.send("checked")
        assert await recv(ws) == "checked"  # the checking consumer would answer INVALID ...
