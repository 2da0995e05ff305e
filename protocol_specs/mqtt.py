"""Build and route the ``mqtt.*`` messages of ``mqtt.md``: pure, stdlib only.

What both sides of the MQTT gateway need of a message, kept next to the spec
so that consumers (and ``gateway worker``, which runs only Django consumers)
never import the gateway or aiomqtt:

- the message types;
- the requests consumers send on ``mqtt.send``: :func:`publish_message`,
  :func:`subscribe_message`, :func:`unsubscribe_message`;
- which channels Django workers consume (:func:`consumer_channels`) and the
  conversation, the unit of ordering, of a message (:func:`conversation_key`).
"""

from __future__ import annotations

import uuid
from typing import Any, Hashable

__all__ = [
    "PUBLISH", "RESULT", "SUBSCRIBE", "UNDECODABLE", "UNSUBSCRIBE", "consumer_channels", "conversation_key",
    "publish_message", "subscribe_message", "unsubscribe_message",
]

#: The default inbound channel, and the type of inbound messages.
PUBLISH = "mqtt.publish"
#: The type of a message whose payload did not decode as its subscription asks.
UNDECODABLE = "mqtt.undecodable"
#: The type of the outcome of a consumer's request, sent to its reply_channel.
RESULT = "mqtt.result"
SUBSCRIBE = "mqtt.subscribe"
UNSUBSCRIBE = "mqtt.unsubscribe"


def consumer_channels(section: Any) -> list[str]:
    """Every subscription's channel (``mqtt.publish`` when none is configured).

    ``mqtt.publish`` also gets messages no known subscription matches; list it
    in ``django.channels`` to have workers for those.

    Args:
        section: the ``mqtt:`` section (anything with ``subscriptions`` whose
            items have a ``channel``).
    """
    return sorted({s.channel for s in section.subscriptions} or {PUBLISH})


def conversation_key(message: dict[str, Any]) -> Hashable | None:
    """The topic: the spec keeps order per topic (``mqtt.result`` has no order to keep).

    Every inbound message has the same reply_channel (``mqtt.send``), so the
    core's default would put all topics into one conversation.
    """
    if message.get("type") in (PUBLISH, UNDECODABLE):
        return message.get("topic")
    return None


def publish_message(topic: str, payload: bytes | str | None = b"", qos: int = 0, retain: bool = False,
                    properties: dict[str, Any] | None = None, reply_channel: str | None = None,
                    id: str | None = None) -> dict[str, Any]:
    """An outbound ``mqtt.publish`` request.

    Args:
        topic: the topic name.
        payload: bytes, or str (sent as UTF-8).
        qos: 0, 1 or 2.
        retain: the retain flag.
        properties: MQTT 5 properties (content_type, response_topic, correlation_data,
            user_properties, message_expiry, payload_format).
        reply_channel: where the gateway sends the ``mqtt.result``.
        id: echoed in the result.
    """
    message: dict[str, Any] = {"type": PUBLISH, "topic": topic, "payload": payload, "qos": qos,
                               "retain": retain}
    if properties:
        message["properties"] = properties
    if reply_channel:
        message["reply_channel"] = reply_channel
        message["id"] = id or uuid.uuid4().hex
    elif id:
        message["id"] = id
    return message


def subscribe_message(filter: str, qos: int = 1, channel: str | None = None, decode: str = "bytes",
                      reply_channel: str | None = None, id: str | None = None) -> dict[str, Any]:
    """An ``mqtt.subscribe`` request (arguments as in ``consumers.mqtt.MqttContext.subscribe``)."""
    message: dict[str, Any] = {"type": SUBSCRIBE, "filter": filter, "qos": qos, "decode": decode}
    if channel:
        message["channel"] = channel
    return _correlated(message, reply_channel, id)


def unsubscribe_message(filter: str, reply_channel: str | None = None, id: str | None = None) -> dict[str, Any]:
    """An ``mqtt.unsubscribe`` request."""
    return _correlated({"type": UNSUBSCRIBE, "filter": filter}, reply_channel, id)


def _correlated(message: dict[str, Any], reply_channel: str | None, id: str | None) -> dict[str, Any]:
    if reply_channel:
        message["reply_channel"] = reply_channel
    if id:
        message["id"] = id
    return message
