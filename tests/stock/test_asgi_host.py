"""The per-connection host and the websocket <-> ASGI translation, in-process.

The end-to-end behaviour is in test_stock_consumers.py; these cover what a
real stack reaches only by accident: the exact messages sent (checked against
the spec's schema), an instance that fails, one that never stops, late messages.
"""

from __future__ import annotations

import asyncio

import pytest
from channels.consumer import AsyncConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from consumers import asgi_websocket
from gateways.core.asgi_host import AsgiHost, adapter_for
from gateways.core.layer_classes import MemoryChannelLayer
from gateways.core.specs import load_schema
from gateways.core.worker import channel_application, consumer_class_for, hosts_connections

SCHEMA = load_schema("websocket")


def connect_message(reply_channel: str, **extra) -> dict:
    message = {"type": "websocket.connect", "id": "c1", "reply_channel": reply_channel, "path": "/ws/x/",
               "kwargs": {}, "order": 0, "query_string": b"q=1",
               "headers": [[b"host", b"h"], [b"cookie", b"sessionid=abc"], [b"user-agent", b"t"]],
               "client": ["127.0.0.1", 5000], "server": ["127.0.0.1", 8000], "subprotocols": ["chat"],
               "scheme": "ws", **extra}
    assert SCHEMA.problem(message) is None
    return message


def receive_message(reply_channel: str, order: int, text: str, state: dict | None = None) -> dict:
    message = {"type": "websocket.receive", "id": f"r{order}", "reply_channel": reply_channel, "path": "/ws/x/",
               "kwargs": {}, "order": order, "text": text}
    if state:
        message["state"] = state
    return message


def disconnect_message(reply_channel: str, order: int) -> dict:
    return {"type": "websocket.disconnect", "id": f"d{order}", "reply_channel": reply_channel, "path": "/ws/x/",
            "kwargs": {}, "order": order, "code": 1000}


# -- the translation ---------------------------------------------------------------


def test_scope_from_connect_is_daphnes_shape():
    scope = asgi_websocket.scope(connect_message("specific.g!1"))
    assert scope["type"] == "websocket"
    assert scope["path"] == "/ws/x/" and scope["raw_path"] == b"/ws/x/"
    assert scope["query_string"] == b"q=1"
    assert (b"cookie", b"sessionid=abc") in scope["headers"]
    assert scope["client"] == ["127.0.0.1", 5000] and scope["subprotocols"] == ["chat"]


def test_replies_are_valid_spec_messages():
    start = connect_message("specific.g!1")
    accept = asgi_websocket.reply({"type": "websocket.accept", "subprotocol": "chat",
                                   "headers": [(b"x-a", b"1")]}, start)
    assert accept["subprotocol"] == "chat" and accept["headers"] == [[b"x-a", b"1"]]
    # The handshake the gateway keeps for a re-created instance: only what middleware reads.
    assert accept["state"] == {"asgi": {"headers": [[b"cookie", b"sessionid=abc"]], "query_string": b"q=1",
                                        "subprotocols": ["chat"]}}
    sent = [accept,
            asgi_websocket.reply({"type": "websocket.send", "text": "t", "bytes": None}, start),
            asgi_websocket.reply({"type": "websocket.send", "bytes": b"b", "text": None}, start),
            asgi_websocket.reply({"type": "websocket.close"}, start),
            asgi_websocket.reply({"type": "websocket.close", "code": 1011, "reason": "x" * 200}, start),
            asgi_websocket.reply({"type": "websocket.group_add", "group": "room"}, start),
            asgi_websocket.failed(start)]
    for message in sent:
        assert SCHEMA.problem(message) is None, message
    # Codes the spec does not let applications send become a normal close.
    assert sent[4]["code"] == 1000 and len(sent[4]["reason"]) == 123


def test_accept_on_an_auto_accepted_route_or_a_recreated_instance():
    auto = connect_message("specific.g!1", accepted=True)
    only_state = asgi_websocket.reply({"type": "websocket.accept", "subprotocol": "chat"}, auto)
    assert set(only_state) == {"type", "state"}
    assert asgi_websocket.reply({"type": "websocket.accept"}, auto | {"headers": [], "query_string": b"",
                                                                      "subprotocols": []}) is None
    assert asgi_websocket.reply({"type": "websocket.accept"}, connect_message("specific.g!1"), recreated=True) is None


def test_a_later_message_rebuilds_the_scope_from_the_kept_handshake():
    start = connect_message("specific.g!1")
    state = asgi_websocket.reply({"type": "websocket.accept"}, start)["state"]
    scope = asgi_websocket.scope(receive_message("specific.g!1", 3, "hi", state))
    assert scope["headers"] == [(b"cookie", b"sessionid=abc")]
    assert scope["query_string"] == b"q=1" and scope["path"] == "/ws/x/"


def test_unknown_events_are_refused():
    with pytest.raises(ValueError):
        asgi_websocket.reply({"type": "websocket.http.response.start", "status": 403}, connect_message("r"))
    with pytest.raises(ValueError):
        asgi_websocket.reply({"type": "websocket.send"}, connect_message("r"))


def test_the_core_finds_the_translation_by_protocol_name():
    assert adapter_for("websocket") is asgi_websocket
    assert adapter_for("nosuchprotocol") is None


def test_which_channels_get_an_instance_per_connection():
    from channels.auth import AuthMiddlewareStack
    from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter
    from django.urls import re_path

    from consumers.websocket import WebSocketConsumer

    stack = AuthMiddlewareStack(URLRouter([re_path(r"^ws/$", Echo.as_asgi())]))
    app = ProtocolTypeRouter({"channel": ChannelNameRouter({"a": stack, "b": Echo.as_asgi(),
                                                            "c": WebSocketConsumer.as_asgi()})})
    assert channel_application(app, "a") is stack
    assert hosts_connections(consumer_class_for(app, "a"))
    assert hosts_connections(consumer_class_for(app, "b"))
    assert not hosts_connections(consumer_class_for(app, "c"))
    assert channel_application(app, "missing") is None


# -- the host ------------------------------------------------------------------------


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "boom":
            raise RuntimeError("on purpose")
        await self.send(text_data=text_data)


class NeverStops(AsyncConsumer):
    """A plain consumer whose disconnect handler does not raise StopConsumer."""

    ended = 0

    async def websocket_connect(self, message):
        await self.send({"type": "websocket.accept"})

    async def websocket_disconnect(self, message):
        NeverStops.ended += 1


async def replies(layer: MemoryChannelLayer, reply_channel: str, count: int) -> list[dict]:
    """The next ``count`` replies, all of which must be for ``reply_channel``
    (the gateway's way: one receive on the process channel)."""
    found = []
    for _ in range(count):
        target, message = await asyncio.wait_for(layer.receive_single(layer.process_channel), 5)
        assert target == reply_channel
        found.append(message)
    return found


@pytest.fixture
def layer():
    """The layer replies go through; the instances' own is the test settings' in-memory one."""
    return MemoryChannelLayer()


async def test_a_failing_instance_closes_its_connection_and_late_messages_are_dropped(layer):
    host = AsgiHost("websocket.app", Echo.as_asgi(), layer)
    reply = await layer.new_channel()
    await host.submit(connect_message(reply))
    await host.submit(receive_message(reply, 1, "one"))
    assert [m["type"] for m in await replies(layer, reply, 2)] == ["websocket.accept", "websocket.send"]
    await host.submit(receive_message(reply, 2, "boom"))
    (close,) = await replies(layer, reply, 1)
    assert close["type"] == "websocket.close" and SCHEMA.problem(close) is None
    await asyncio.wait_for(host.idle(), 5)
    await host.submit(receive_message(reply, 3, "late"))
    await asyncio.wait_for(host.idle(), 5)
    assert host.stats["failed"] == 1 and host.stats["dropped"] == 1 and host.stats["recreated"] == 0
    assert not host.instances


async def test_an_instance_that_does_not_stop_ends_after_its_disconnect(layer):
    host = AsgiHost("websocket.app", NeverStops.as_asgi(), layer)
    reply = await layer.new_channel()
    await host.submit(connect_message(reply))
    await host.submit(disconnect_message(reply, 1))
    await asyncio.wait_for(host.idle(), 5)
    for _ in range(100):
        if not host.instances:
            break
        await asyncio.sleep(0.01)
    assert not host.instances and NeverStops.ended == 1 and host.stats["failed"] == 0


async def test_a_message_without_an_instance_recreates_one_with_its_accept_absorbed(layer):
    host = AsgiHost("websocket.app", Echo.as_asgi(), layer)
    reply = await layer.new_channel()
    await host.submit(receive_message(reply, 5, "after a restart"))
    (echo,) = await replies(layer, reply, 1)  # no second accept
    assert echo == {"type": "websocket.send", "text": "after a restart"}
    assert host.stats["recreated"] == 1
    await host.close()


async def test_the_limit_holds_back_the_listener(layer):
    gate = asyncio.Event()

    class Slow(AsyncWebsocketConsumer):
        async def receive(self, text_data=None, bytes_data=None):
            await gate.wait()

    host = AsgiHost("websocket.app", Slow.as_asgi(), layer, limit=3)
    channels = [await layer.new_channel() for _ in range(3)]
    for reply in channels:
        await host.submit(connect_message(reply))
    await asyncio.wait_for(host.idle(), 5)
    for reply in channels:
        await host.submit(receive_message(reply, 1, "wait"))
    blocked = asyncio.ensure_future(host.submit(receive_message(channels[0], 2, "more")))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    gate.set()
    await asyncio.wait_for(blocked, 5)
    await asyncio.wait_for(host.idle(), 5)
    await host.close()


async def test_an_instance_that_swallows_its_cancellation_is_forgotten(layer, monkeypatch):
    """channels_redis on redis-py 8 can lose the cancellation of a consumer's
    layer receive; such an instance must not hold the worker's drain forever."""
    from gateways.core import asgi_host

    monkeypatch.setattr(asgi_host, "END_TIMEOUT", 0.2)
    release = asyncio.Event()

    async def stubborn(scope, receive, send):
        while (await receive())["type"] != "websocket.disconnect":
            pass
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass

    host = AsgiHost("websocket.app", stubborn, layer)
    reply = await layer.new_channel()
    await host.submit(connect_message(reply))
    await host.submit(disconnect_message(reply, 1))
    await asyncio.wait_for(host.idle(), 5)
    assert host.stats["end_overdue"] == 1 and not host.instances
    # A late message for the connection is dropped, not given a new instance.
    await host.submit(receive_message(reply, 2, "late"))
    assert host.stats["dropped"] == 1 and not host.instances
    release.set()


async def test_close_does_not_wait_forever_for_a_stubborn_instance(layer, monkeypatch):
    from gateways.core import asgi_host

    monkeypatch.setattr(asgi_host, "END_TIMEOUT", 0.2)
    release = asyncio.Event()

    async def stubborn(scope, receive, send):
        await receive()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass

    host = AsgiHost("websocket.app", stubborn, layer)
    await host.submit(connect_message(await layer.new_channel()))
    await asyncio.wait_for(host.close(), 5)
    release.set()


# -- the worker's choice per channel and per message ---------------------------------


SEEN: list[tuple[str, str]] = []


class Mixed(AsyncWebsocketConsumer):
    """A stock consumer on a channel that also gets worker-channel messages."""

    async def connect(self):
        SEEN.append((self.scope["type"], "connect"))
        await self.accept()

    async def job_run(self, message):
        SEEN.append((self.scope["type"], "job"))


async def test_the_worker_hosts_connections_and_sends_other_messages_to_lanes():
    from channels.layers import get_channel_layer
    from channels.routing import ChannelNameRouter, ProtocolTypeRouter

    from consumers.websocket import WebSocketConsumer
    from gateways.core.worker import ConcurrentWorker

    layer = get_channel_layer()  # the test settings' in-memory layer: instances use it too
    app = ProtocolTypeRouter({"channel": ChannelNameRouter({"mixed": Mixed.as_asgi(),
                                                            "gateway": WebSocketConsumer.as_asgi()})})
    worker = ConcurrentWorker(app, ["mixed", "gateway"], layer, concurrency=4)
    worker._make_lanes()
    assert set(worker.hosts) == {"mixed"}
    # Its instances share Channels' per-message close_old_connections hop.
    import channels.consumer

    from gateways.core.oldconnections import SharedClose

    assert isinstance(channels.consumer.aclose_old_connections, SharedClose)
    SEEN.clear()
    reply = await layer.new_channel()
    await worker._submit(worker.lanes["mixed"], {"type": "job.run"})
    await worker._submit(worker.lanes["mixed"], connect_message(reply))
    (accept,) = await replies(layer, reply, 1)
    assert accept["type"] == "websocket.accept"
    await asyncio.wait_for(asyncio.gather(worker.lanes["mixed"].idle(), worker.hosts["mixed"].idle()), 5)
    assert sorted(SEEN) == [("channel", "job"), ("websocket", "connect")]
    await worker.lanes["mixed"].close()
    await worker.hosts["mixed"].close()


def test_a_recreated_scope_keeps_wss():
    start = connect_message("specific.g!1", scheme="wss")
    state = asgi_websocket.reply({"type": "websocket.accept"}, start)["state"]
    assert asgi_websocket.scope(receive_message("specific.g!1", 1, "x", state))["scheme"] == "wss"
    assert asgi_websocket.scope(receive_message("specific.g!1", 1, "x"))["scheme"] == "ws"


# -- the hand-over of a stopping worker ----------------------------------------------


def test_resumes_are_valid_spec_messages_repeating_the_handshake():
    connect = connect_message("specific.g!1")
    resume = asgi_websocket.resume(connect, "handover.x")
    assert SCHEMA.problem(resume) is None
    assert resume["accepted"] is True and resume["id"] != connect["id"]
    assert asgi_websocket.resumes(resume) == "handover.x" and asgi_websocket.resumes(connect) is None
    assert SCHEMA.problem(asgi_websocket.resumed(resume)) is None
    assert asgi_websocket.scope(resume) == asgi_websocket.scope(connect)
    # An instance re-created from a later message repeats what the gateway kept.
    state = asgi_websocket.reply({"type": "websocket.accept"}, connect)["state"]
    again = asgi_websocket.resume(receive_message("specific.g!1", 3, "x", state), "handover.x")
    assert SCHEMA.problem(again) is None
    assert asgi_websocket.scope(again)["headers"] == [(b"cookie", b"sessionid=abc")]
    assert asgi_websocket.scope(again)["query_string"] == b"q=1"


class JoinsRoom(AsyncWebsocketConsumer):
    """The tutorial's pattern: state on self, a group joined in connect."""

    disconnects = 0

    async def connect(self):
        self.room = "room"
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        JoinsRoom.disconnects += 1

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=f"{self.room}: {text_data}")


async def test_hand_over_moves_the_instance_and_its_groups_to_the_next_host(layer):
    from channels.layers import get_channel_layer

    from gateways.core.asgi_host import track_groups

    project_layer = get_channel_layer()  # the instances' own (the test settings' in-memory one)
    project_layer.groups.pop("room", None)
    track_groups(project_layer)
    old = AsgiHost("websocket.app", JoinsRoom.as_asgi(), layer)
    reply = await layer.new_channel()
    await old.submit(connect_message(reply))
    assert [m["type"] for m in await replies(layer, reply, 1)] == ["websocket.accept"]
    (old_name,) = project_layer.groups["room"]

    # Another worker takes the resume while the old one waits for its acknowledgement.
    new = AsgiHost("websocket.app", JoinsRoom.as_asgi(), layer)

    async def next_worker() -> dict:
        resume = await asyncio.wait_for(layer.receive("websocket.app"), 5)
        # Until the new instance joined, the old one stays in the group.
        assert old_name in project_layer.groups["room"]
        await new.submit(resume)
        return resume

    taking = asyncio.ensure_future(next_worker())
    await old.hand_over(wait=10)
    await old.close()
    resume = await taking
    assert asgi_websocket.resumes(resume) and resume["reply_channel"] == reply
    # The old instance left its group once the new one joined, without its disconnect handler running.
    (new_name,) = project_layer.groups["room"]  # connect ran again: the group is joined again
    assert new_name != old_name and JoinsRoom.disconnects == 0
    assert old.stats["handed_over"] == 1 and old.stats["taken_over"] == 1 and old.stats["groups_left"] == 1
    assert new.stats["resumed"] == 1
    await new.submit(dict(resume, id="again"))  # the connection is hosted already: acknowledged, ignored
    acknowledgement = await asyncio.wait_for(layer.receive(asgi_websocket.resumes(resume)), 5)
    assert acknowledgement == {"type": "websocket.resumed", "reply_channel": reply}
    await new.submit(receive_message(reply, 1, "hi"))
    (echo,) = await replies(layer, reply, 1)  # the re-created accept was absorbed
    assert echo == {"type": "websocket.send", "text": "room: hi"}
    assert new.stats["resume_ignored"] == 1 and new.stats["connections"] == 1
    await new.close()


async def test_with_no_other_worker_the_hand_over_gives_up_after_its_wait(layer):
    from channels.layers import get_channel_layer

    from gateways.core.asgi_host import track_groups

    project_layer = get_channel_layer()
    project_layer.groups.pop("room", None)  # what other tests' cancelled instances left
    track_groups(project_layer)
    old = AsgiHost("websocket.app", JoinsRoom.as_asgi(), layer)
    reply = await layer.new_channel()
    await old.submit(connect_message(reply))
    await replies(layer, reply, 1)
    assert len(project_layer.groups["room"]) == 1
    await old.hand_over(wait=10, first=0.2)  # no acknowledgement within `first`: nobody else runs
    await old.close()
    assert old.stats["handed_over"] == 1 and old.stats["taken_over"] == 0
    assert not project_layer.groups.get("room")
    # The resume waits on the channel for the next worker to start.
    assert asgi_websocket.resumes(await asyncio.wait_for(layer.receive("websocket.app"), 5))
