"""Test an ``mqtt.*`` consumer: publish into it, read what it asks the gateway.

::

    async with MqttCommunicator(Devices, "mqtt.devices") as mqtt:
        await mqtt.publish("sensors/k7/temperature", b"21.5")
        request = await mqtt.receive_request()          # an mqtt.send message
        assert request["topic"] == "commands/k7"
"""

from __future__ import annotations

import uuid
from typing import Any

from consumers.testing.harness import GatewayCommunicator

__all__ = ["MqttCommunicator", "mqtt_publish"]

#: The gateway's default outbound channel.
SEND_CHANNEL = "mqtt.send"


def mqtt_publish(topic: str, payload: Any = b"", qos: int = 1, retain: bool = False,
                 properties: dict[str, Any] | None = None, subscription: str | None = "#",
                 reply_channel: str = SEND_CHANNEL, dup: bool = False, id: str | None = None) -> dict[str, Any]:
    """An inbound ``mqtt.publish`` as the gateway sends it to consumers.

    Args:
        topic: the topic it was published on.
        payload: bytes, or what the subscription's ``decode`` gives (str, a JSON value).
        qos: 0 or 1 (the gateway subscribes at QoS 1 at most).
        retain: the retain flag.
        properties: MQTT 5 properties.
        subscription: the gateway subscription it matched.
        reply_channel: the gateway's outbound channel.
        dup: the broker's redelivery flag.
        id: the message id (random by default).
    """
    return {
        "type": "mqtt.publish", "id": id or uuid.uuid4().hex, "topic": topic, "payload": payload, "qos": qos,
        "retain": retain, "dup": dup, "subscription": subscription, "properties": dict(properties or {}),
        "reply_channel": reply_channel,
    }


class MqttCommunicator(GatewayCommunicator):
    """An MQTT gateway's side of an :class:`~consumers.mqtt.MqttConsumer`.

    Args:
        consumer: the consumer class, or a harness/communicator to share.
        channel: the channel the gateway's subscription sends to.
        send_channel: the gateway's outbound channel (``mqtt.send``).
        timeout: upper bound, in seconds, on every wait.
        raise_errors: see :class:`~consumers.testing.ConsumerHarness`.
    """

    default_channel = "mqtt.publish"
    default_send_channel = SEND_CHANNEL

    async def publish(self, topic: str, payload: Any = b"", **fields: Any) -> dict[str, Any]:
        """Deliver a message received on ``topic`` (keywords as in :func:`mqtt_publish`); return it."""
        message = mqtt_publish(topic, payload, reply_channel=self.send_channel, **fields)
        await self.harness.deliver(message)
        return message

    async def undecodable(self, topic: str, payload: bytes, error: str = "text: not UTF-8",
                          **fields: Any) -> dict[str, Any]:
        """Deliver an ``mqtt.undecodable`` (a payload the subscription could not decode); return it."""
        message = mqtt_publish(topic, payload, reply_channel=self.send_channel, **fields)
        message.update(type="mqtt.undecodable", error=error)
        await self.harness.deliver(message)
        return message

    async def receive_request(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message the consumer sent to the gateway's outbound channel
        (``mqtt.publish``, ``mqtt.subscribe`` or ``mqtt.unsubscribe``)."""
        return await self.harness.receive(self.send_channel, timeout=timeout)

    async def receive_publish(self, timeout: float | None = None) -> dict[str, Any]:
        """The next request, which must be an ``mqtt.publish``."""
        request = await self.receive_request(timeout)
        assert request["type"] == "mqtt.publish", f"expected an mqtt.publish request, got {request!r}"
        return request

    async def answer(self, request: dict[str, Any], ok: bool = True, error: str | None = None,
                     **fields: Any) -> dict[str, Any] | None:
        """Send the ``mqtt.result`` the gateway would send for ``request`` to its
        ``reply_channel`` (none when it names none); return it.

        Args:
            request: an ``mqtt.publish``/``subscribe``/``unsubscribe`` the consumer sent.
            ok: whether it succeeded.
            error: why not.
            **fields: ``granted_qos`` for a subscribe, say.
        """
        reply_channel = request.get("reply_channel")
        if not reply_channel:
            return None
        result: dict[str, Any] = {"type": "mqtt.result", "id": request.get("id"), "request": request["type"],
                                  "ok": ok, "error": error}
        for key in ("topic", "filter"):
            if key in request:
                result[key] = request[key]
        result.update(fields)
        await self.layer.send(reply_channel, result)
        return result
