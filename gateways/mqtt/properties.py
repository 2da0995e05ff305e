"""MQTT 5 properties of a PUBLISH <-> the ``properties`` dict of messages.

paho keeps properties in a :class:`paho.mqtt.properties.Properties` object
with CamelCase attributes; messages carry a dict with the spec's snake_case
keys, holding only the properties that were set.
"""

from __future__ import annotations

from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

#: dict key -> paho attribute, for the PUBLISH properties the spec carries.
PUBLISH_PROPERTIES = {
    "payload_format": "PayloadFormatIndicator",
    "message_expiry": "MessageExpiryInterval",
    "content_type": "ContentType",
    "response_topic": "ResponseTopic",
    "correlation_data": "CorrelationData",
    "user_properties": "UserProperty",
}
#: Only the broker sets these; a consumer's publish cannot.
RECEIVED_ONLY = {"subscription_identifiers": "SubscriptionIdentifier"}


def from_paho(properties: Properties | None) -> dict[str, Any]:
    """The dict of the properties a received PUBLISH carried.

    Args:
        properties: paho's properties (None for MQTT 3.1.1).
    """
    if properties is None:
        return {}
    out: dict[str, Any] = {}
    for key, name in {**PUBLISH_PROPERTIES, **RECEIVED_ONLY}.items():
        if not hasattr(properties, name):
            continue
        value = getattr(properties, name)
        if key == "user_properties":
            value = [[str(k), str(v)] for k, v in value]
        elif key == "subscription_identifiers":
            value = [int(v) for v in (value if isinstance(value, list) else [value])]
        elif key == "correlation_data":
            value = bytes(value)
        out[key] = value
    return out


def to_paho(values: dict[str, Any]) -> Properties | None:
    """paho properties for a PUBLISH from a message's ``properties`` dict.

    Raises ValueError naming a key that is not a publishable property or a
    value paho refuses.

    Args:
        values: the dict (empty gives None: no properties).
    """
    if not values:
        return None
    properties = Properties(PacketTypes.PUBLISH)
    for key, value in values.items():
        name = PUBLISH_PROPERTIES.get(key)
        if name is None:
            raise ValueError(f"properties.{key}: not a property a publish can carry")
        if key == "user_properties":
            value = [(str(k), str(v)) for k, v in value]
        elif key == "correlation_data" and isinstance(value, str):
            value = value.encode("utf-8")
        try:
            setattr(properties, name, value)
        except Exception as exc:  # paho raises MQTTException and others for bad values
            raise ValueError(f"properties.{key}: {exc}") from None
    return properties
