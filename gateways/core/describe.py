"""One line naming a gateway message in logs: its type, ``id`` and protocol key.

Every consumer failure is logged with the channel it came from and this
description, so an operator can find the message in the gateway's own logs
and in the outside system (the MQTT topic, the WebSocket connection, the
Slack channel, the mail's Message-ID). It knows no protocol: it picks the
keys the specs use for that purpose from whatever message it is given.
"""

from __future__ import annotations

from typing import Any

#: Keys that name where a message came from or belongs, in the order shown.
#: ``topic``: MQTT; ``team``/``channel``: Slack (a Slack channel id; on email
#: the route's channel); ``reply_channel``/``path``: the WebSocket connection;
#: ``message_id``: the mail's Message-ID.
KEYS = ("topic", "team", "channel", "reply_channel", "path", "message_id")

#: Longest value shown; a longer one is cut (a log line stays one readable line).
MAX_VALUE = 120


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "..."


def _header(message: dict[str, Any], name: str) -> Any:
    """A header's value from a ``headers`` list of ``[name, value]`` pairs (email)."""
    headers = message.get("headers")
    if not isinstance(headers, list):
        return None
    for item in headers:
        if isinstance(item, (list, tuple)) and len(item) == 2 and str(item[0]).lower() == name.lower():
            return item[1]
    return None


def describe(message: Any) -> str:
    """``type id=... key=value ...`` for a log line; never raises.

    Shows the message's ``type`` and ``id`` (``id=?`` when it has none) and,
    of :data:`KEYS`, those present and not null; an email whose
    ``message_id`` is missing falls back to its ``Message-ID`` header.

    >>> describe({"type": "mqtt.publish", "id": "7", "topic": "a/b", "reply_channel": "mqtt.send"})
    'mqtt.publish id=7 topic=a/b reply_channel=mqtt.send'
    """
    if not isinstance(message, dict):
        return f"a {type(message).__name__} (not a message)"
    parts = [_shown(message.get("type", "?")), f"id={_shown(message.get('id', '?'))}"]
    for key in KEYS:
        value = message.get(key)
        if value is None and key == "message_id":
            value = _header(message, "Message-ID")
        if value is not None:
            parts.append(f"{key}={_shown(value)}")
    return " ".join(parts)
