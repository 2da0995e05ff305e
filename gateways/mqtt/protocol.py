"""MQTT <-> channel messages, with no I/O.

Everything here works on plain data, so it is tested without a broker:
topic filters and matching, payload decoding, the ``mqtt.publish`` message a
received PUBLISH becomes, and the requests consumers send on ``mqtt.send``.
The spec is ``protocol_specs/mqtt.md``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

# The message types are the spec's, shared with consumers and `gateway worker`.
from protocol_specs.mqtt import PUBLISH, RESULT, SUBSCRIBE, UNDECODABLE, UNSUBSCRIBE  # noqa: F401

#: Highest QoS the gateway subscribes at: paho sends PUBREC for QoS 2 before
#: the application sees the message, so QoS 2 cannot wait for the hand-off.
MAX_SUBSCRIBE_QOS = 1

Decode = Literal["bytes", "text", "json"]


# --------------------------------------------------------------------------
# Topics and filters (MQTT 3.1.1 §4.7, MQTT 5 §4.7-4.8).


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split ``$share/<group>/<filter>`` into ``(group, filter)``; ``(None, filter)`` otherwise.

    Args:
        topic_filter: a subscription filter, shared or not.
    """
    if topic_filter.startswith("$share/"):
        _, group, rest = (topic_filter.split("/", 2) + ["", ""])[:3]
        return group, rest
    return None, topic_filter


def filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid subscription filter, or None.

    Args:
        topic_filter: the filter, possibly ``$share/<group>/<filter>``.
    """
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            return f"{topic_filter!r}: a shared subscription is $share/<group>/<filter>"
        if "+" in parts[1] or "#" in parts[1]:
            return f"{topic_filter!r}: the share group name cannot hold + or #"
        topic_filter = parts[2]
    if not topic_filter:
        return "a topic filter cannot be empty"
    if "\x00" in topic_filter:
        return f"{topic_filter!r}: a topic filter cannot hold NUL"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return f"{topic_filter!r}: '#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return f"{topic_filter!r}: '+' must be a whole level"
    return None


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to, or None.

    Args:
        topic: a topic name (no wildcards).
    """
    if not topic:
        return "a topic cannot be empty"
    if "+" in topic or "#" in topic:
        return f"{topic!r}: a topic to publish to cannot hold wildcards"
    if "\x00" in topic:
        return f"{topic!r}: a topic cannot hold NUL"
    if len(topic.encode("utf-8")) > 65535:
        return "topic longer than 65535 bytes"
    return None


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (shared prefixes are ignored).

    Topics starting with ``$`` do not match filters starting with a wildcard.

    Args:
        topic_filter: a valid filter.
        topic: a topic name.
    """
    _, topic_filter = split_shared(topic_filter)
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    wanted = topic_filter.split("/")
    levels = topic.split("/")
    for index, level in enumerate(wanted):
        if level == "#":
            return True
        if index >= len(levels):
            return False
        if level != "+" and level != levels[index]:
            return False
    return len(wanted) == len(levels)


# --------------------------------------------------------------------------
# Subscriptions and received messages.


@dataclass(frozen=True)
class Subscription:
    """A topic filter the gateway subscribes to and where its messages go.

    Args:
        filter: the topic filter, possibly ``$share/<group>/<filter>``.
        qos: the QoS asked for (2 is served at 1; see :data:`MAX_SUBSCRIBE_QOS`).
        channel: the channel its messages are sent to.
        decode: how payloads are decoded: ``bytes`` (as is), ``text`` (UTF-8), ``json``.
    """

    filter: str
    qos: int = 1
    channel: str = PUBLISH
    decode: Decode = "bytes"

    @property
    def granted_qos(self) -> int:
        """The QoS the gateway actually subscribes at."""
        return min(self.qos, MAX_SUBSCRIBE_QOS)


def route(subscriptions: list[Subscription], topic: str) -> Subscription | None:
    """The first subscription whose filter matches ``topic``, or None.

    Args:
        subscriptions: in priority order (configured ones first).
        topic: the topic of a received message.
    """
    for subscription in subscriptions:
        if topic_matches(subscription.filter, topic):
            return subscription
    return None


@dataclass
class Received:
    """A PUBLISH the broker delivered, as plain data.

    Args:
        topic: the topic name.
        payload: the raw payload.
        qos: the QoS it was delivered at.
        retain: the retain flag (a retained message sent on subscribing).
        dup: the broker's redelivery flag.
        properties: MQTT 5 properties as :mod:`gateways.mqtt.properties` makes them.
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    properties: dict[str, Any] = field(default_factory=dict)


def decode_payload(payload: bytes, decode: Decode) -> Any:
    """The payload as the subscription asks; raises ValueError naming the problem.

    Any failure to decode is a ValueError, whatever the decoder raised: a
    payload is input from anyone who may publish, and one that breaks the
    decoder some other way (JSON nested thousands deep exhausts the
    recursion limit) must become ``mqtt.undecodable`` like any other.

    Args:
        payload: the raw payload.
        decode: ``bytes``, ``text`` or ``json``.
    """
    if decode == "bytes":
        return payload
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"payload is not UTF-8: {exc}") from None
    if decode == "text":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("payload is JSON nested too deep to decode") from None
    except Exception as exc:  # noqa: BLE001 - MemoryError and whatever else: still one bad payload
        raise ValueError(f"payload did not decode: {type(exc).__name__}: {exc}") from None


def new_id() -> str:
    """A unique message id."""
    return uuid.uuid4().hex


def inbound_message(
    received: Received,
    subscription: Subscription | None,
    reply_channel: str,
    message_id: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The channel and ``mqtt.publish`` (or ``mqtt.undecodable``) message for ``received``.

    A message no subscription matches (a subscription the broker kept in the
    persistent session but this gateway no longer knows) goes to the default
    channel with ``subscription`` None and its payload as bytes.

    Args:
        received: the PUBLISH.
        subscription: the subscription it matched, if any.
        reply_channel: where consumers send publishes (the gateway's outbound channel).
        message_id: the id to give it (new when omitted).
    """
    channel = subscription.channel if subscription else PUBLISH
    message: dict[str, Any] = {
        "type": PUBLISH,
        "id": message_id or new_id(),
        "topic": received.topic,
        "payload": received.payload,
        "qos": received.qos,
        "retain": received.retain,
        "dup": received.dup,
        "subscription": subscription.filter if subscription else None,
        "properties": dict(received.properties),
        "reply_channel": reply_channel,
    }
    if subscription is not None and subscription.decode != "bytes":
        try:
            message["payload"] = decode_payload(received.payload, subscription.decode)
        except ValueError as exc:
            message["type"] = UNDECODABLE
            message["error"] = f"{subscription.decode}: {exc}"
    return channel, message


# --------------------------------------------------------------------------
# Consumers' requests on mqtt.send.


@dataclass
class PublishRequest:
    """A publish a consumer asked for.

    Args:
        topic: the topic name.
        payload: the payload as bytes (str is encoded UTF-8).
        qos: 0, 1 or 2.
        retain: the retain flag.
        properties: MQTT 5 properties as a dict (see the spec).
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class SubscribeRequest:
    """A subscription a consumer asked for at runtime.

    Args:
        subscription: the subscription to add.
    """

    subscription: Subscription


@dataclass
class UnsubscribeRequest:
    """A subscription a consumer asked to remove.

    Args:
        filter: the filter as it was subscribed.
    """

    filter: str


Request = PublishRequest | SubscribeRequest | UnsubscribeRequest


def parse_request(message: dict[str, Any], default_channel: str = PUBLISH) -> Request:
    """The request a schema-valid message on ``mqtt.send`` asks for.

    Raises ValueError naming the problem when the message is valid by the
    schema but not by MQTT's rules (a wildcard in a publish topic, say).

    Args:
        message: the message (already validated against the schema).
        default_channel: the channel a subscribe without ``channel`` delivers to.
    """
    mtype = message["type"]
    if mtype == PUBLISH:
        problem = topic_problem(message["topic"])
        if problem:
            raise ValueError(problem)
        payload = message.get("payload", b"")
        if payload is None:
            payload = b""
        elif isinstance(payload, str):
            payload = payload.encode("utf-8")
        elif not isinstance(payload, (bytes, bytearray)):
            # A received message with a decoded JSON payload, sent back as is.
            raise ValueError(f"payload: a publish takes bytes or str, not {type(payload).__name__}")
        properties = dict(message.get("properties") or {})
        # Set by the broker on delivery; a republished message cannot carry them.
        properties.pop("subscription_identifiers", None)
        return PublishRequest(
            topic=message["topic"],
            payload=bytes(payload),
            qos=message.get("qos", 0),
            retain=message.get("retain", False),
            properties=properties,
        )
    if mtype == SUBSCRIBE:
        problem = filter_problem(message["filter"])
        if problem:
            raise ValueError(problem)
        return SubscribeRequest(Subscription(
            filter=message["filter"],
            qos=message.get("qos", 1),
            channel=message.get("channel", default_channel),
            decode=message.get("decode", "bytes"),
        ))
    if mtype == UNSUBSCRIBE:
        problem = filter_problem(message["filter"])
        if problem:
            raise ValueError(problem)
        return UnsubscribeRequest(message["filter"])
    raise ValueError(f"{mtype!r} is not a request the gateway takes on its outbound channel")


def result_message(
    request: dict[str, Any], ok: bool, error: str | None = None, **details: Any
) -> dict[str, Any]:
    """The ``mqtt.result`` for a request, sent to the request's ``reply_channel``.

    Args:
        request: the consumer's message (any dict; its ``id`` and ``type`` are echoed).
        ok: whether the request was carried out.
        error: why not, when ``ok`` is false.
        **details: ``topic``, ``filter`` or ``granted_qos``.
    """
    request_id = request.get("id") if isinstance(request, dict) else None
    request_type = request.get("type") if isinstance(request, dict) else None
    return {
        "type": RESULT,
        "id": request_id if isinstance(request_id, str) else None,
        "request": request_type if isinstance(request_type, str) else None,
        "ok": ok,
        "error": error,
        **details,
    }
