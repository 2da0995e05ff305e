"""The manual-ack isolation module against a real Mosquitto: no PUBACK until ack()."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt
import pytest

from gateways.mqtt import manual_ack
from gateways.mqtt.manual_ack import Delivery, ManualAckClient
from mqtt_stack import mosquitto_pub
from servers import async_wait_until


def test_the_pinned_versions_are_the_installed_ones():
    manual_ack.check_versions()  # raises on an aiomqtt/paho this module was not checked against


def test_other_versions_are_refused(monkeypatch):
    monkeypatch.setattr(aiomqtt, "__version_tuple__", (2, 6, 0))
    with pytest.raises(RuntimeError, match="supports aiomqtt .* found aiomqtt"):
        manual_ack.check_versions()


async def _receive_one(port: int, client_id: str) -> ManualAckClient:
    client = ManualAckClient("127.0.0.1", port, identifier=client_id, clean_session=False)
    await client.__aenter__()
    await client.subscribe("held/#", 1)
    return client


async def next_delivery(client: ManualAckClient, timeout: float = 10) -> Delivery:
    return await asyncio.wait_for(client.messages.__anext__(), timeout)


async def test_unacknowledged_message_is_redelivered_and_acknowledged_one_is_not(mosquitto):
    client_id = f"ack-{uuid.uuid4().hex[:8]}"
    client = await _receive_one(mosquitto.port, client_id)
    assert client.session_present is False
    mosquitto_pub(mosquitto.port, "held/1", b"first", 1)
    delivery = await next_delivery(client)
    assert (delivery.topic, delivery.payload, delivery.qos, delivery.dup) == ("held/1", b"first", 1, False)
    await client.__aexit__(None, None, None)  # leave without PUBACK

    client = await _receive_one(mosquitto.port, client_id)
    assert client.session_present is True
    again = await next_delivery(client)
    assert (again.payload, again.dup) == (b"first", True)  # the broker still owed it to us
    assert client.ack(again.mid, again.qos)
    # Leave only once paho wrote the PUBACK (the DISCONNECT follows it on the socket).
    await async_wait_until(lambda: not client._client.want_write(), what="paho wrote the PUBACK")  # noqa: SLF001
    await client.__aexit__(None, None, None)

    client = await _receive_one(mosquitto.port, client_id)
    try:
        mosquitto_pub(mosquitto.port, "held/2", b"second", 1)
        after = await next_delivery(client)
        assert after.payload == b"second"  # "first" was acknowledged: not sent a third time
    finally:
        await client.__aexit__(None, None, None)


async def test_ack_after_the_connection_is_gone_returns_false(mosquitto):
    client = await _receive_one(mosquitto.port, f"gone-{uuid.uuid4().hex[:8]}")
    mosquitto_pub(mosquitto.port, "held/x", b"x", 1)
    delivery = await next_delivery(client)
    await client.__aexit__(None, None, None)
    assert client.ack(delivery.mid, delivery.qos) is False
    assert client.ack(0, 0) is True  # QoS 0 needs no acknowledgement


async def test_the_reader_takes_a_burst_per_wake_up_bounded_and_in_order(mosquitto):
    client = ManualAckClient("127.0.0.1", mosquitto.port, identifier=f"burst-{uuid.uuid4().hex[:8]}")
    await client.__aenter__()
    try:
        await client.subscribe("burst/#", 0)  # QoS 0: no in-flight window holds the broker back
        ticks = 0
        per_tick: dict[int, int] = {}
        paho_client = client._client
        read = paho_client.loop_read

        def counting_read(*args, **kwargs):
            before = client._received[0]
            rc = read(*args, **kwargs)
            per_tick[ticks] = per_tick.get(ticks, 0) + client._received[0] - before
            return rc

        paho_client.loop_read = counting_read

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        ticker = asyncio.create_task(tick())
        # The loop is blocked while mosquitto_pub runs: the broker's PUBLISHes pile up in the socket.
        mosquitto_pub(mosquitto.port, "burst/1", qos=1, lines=[str(n) for n in range(300)])
        deliveries = [await next_delivery(client) for _ in range(300)]
        ticker.cancel()
        assert [d.payload for d in deliveries] == [str(n).encode() for n in range(300)]
        # Several deliveries per wake-up of the reader (aiomqtt's reads one), never more than READ_BURST.
        assert 1 < max(per_tick.values()) <= manual_ack.READ_BURST
    finally:
        await client.__aexit__(None, None, None)
