"""gateways/mqtt/manual_ack.py: the aiomqtt and paho internals it takes over are
still there and still wired as it relies on, in the installed versions."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateways.mqtt.manual_ack import Delivery, ManualAckClient

UPGRADED = (f"gateways/mqtt/manual_ack.py was checked against aiomqtt 2.2-2.5 with paho-mqtt 2.1-2.2; the "
            f"installed aiomqtt {aiomqtt.__version__} with paho-mqtt {version('paho-mqtt')} changed what it "
            "relies on")


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_callbacks_taken_over_keep_their_signatures():
    for name, expected in [("_on_message", ["self", "client", "userdata", "message"]),
                           ("_on_connect", ["self", "client", "userdata", "flags", "reason_code", "properties"]),
                           ("_on_socket_open", ["self", "client", "userdata", "sock"])]:
        assert parameters(getattr(aiomqtt.Client, name, None) or (lambda: None)) == expected, \
            f"{UPGRADED}: aiomqtt.Client.{name}"


def test_the_stock_socket_callbacks_do_what_the_replacement_mirrors():
    # The replacement reader starts the misc loop as aiomqtt's does, and relies on
    # aiomqtt's _on_socket_close to remove it and stop that loop.
    opened = inspect.getsource(aiomqtt.Client._on_socket_open)
    closed = inspect.getsource(aiomqtt.Client._on_socket_close)
    assert "add_reader" in opened and "self._misc_task" in opened and "self._misc_loop()" in opened, \
        f"{UPGRADED}: aiomqtt.Client._on_socket_open"
    assert "remove_reader" in closed and "self._misc_task" in closed, f"{UPGRADED}: aiomqtt.Client._on_socket_close"


async def test_the_overrides_are_the_callbacks_paho_calls():
    client = ManualAckClient("127.0.0.1", 1883, identifier="compat")
    inner = client._client
    assert isinstance(inner, paho.Client), f"{UPGRADED}: aiomqtt.Client._client is not paho's client"
    for callback in ("on_message", "on_connect", "on_socket_open"):
        assert getattr(inner, callback) == getattr(client, f"_{callback}"), \
            f"{UPGRADED}: paho's {callback} is not aiomqtt.Client._{callback}"
    assert isinstance(client._queue, asyncio.Queue), f"{UPGRADED}: aiomqtt.Client._queue"
    assert isinstance(client._connected, asyncio.Future) and isinstance(client._disconnected, asyncio.Future), \
        f"{UPGRADED}: aiomqtt.Client._connected/_disconnected"
    assert client._loop is asyncio.get_running_loop(), f"{UPGRADED}: aiomqtt.Client._loop"
    assert inspect.iscoroutinefunction(client._misc_loop), f"{UPGRADED}: aiomqtt.Client._misc_loop"
    assert hasattr(inner, "_sock") and callable(inner.loop_read), f"{UPGRADED}: paho Client._sock/loop_read"
    assert callable(inner.manual_ack_set) and callable(inner.ack), f"{UPGRADED}: paho manual_ack_set/ack"


async def test_a_connack_and_a_publish_reach_the_client_as_it_expects():
    client = ManualAckClient("127.0.0.1", 1883, identifier="compat")
    inner = client._client
    inner.on_connect(inner, None, paho.ConnectFlags(session_present=True), ReasonCode(PacketTypes.CONNACK, "Success"),
                     None)
    assert client.session_present is True, f"{UPGRADED}: _on_connect flags"
    assert client._connected.done() and not client._connected.exception(), f"{UPGRADED}: _on_connect"
    message = paho.MQTTMessage(mid=7, topic=b"a/b")
    message.payload, message.qos, message.dup = b"x", 1, True
    inner.on_message(inner, None, message)
    delivery = client._queue.get_nowait()
    assert delivery == Delivery(topic="a/b", payload=b"x", qos=1, retain=False, dup=True, mid=7,
                                properties=delivery.properties), f"{UPGRADED}: _on_message"
