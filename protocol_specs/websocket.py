"""Route the ``websocket.*`` messages of ``websocket.md``: pure, stdlib only.

What ``gateway worker`` (which runs only Django consumers) needs to know of
the WebSocket gateway's messages, kept next to the spec: which channels
Django workers consume and the conversation of a message.
"""

from __future__ import annotations

from typing import Any, Hashable

__all__ = ["consumer_channels", "conversation_key"]


def consumer_channels(section: Any) -> list[str]:
    """Every route's channel, sorted, each once.

    Args:
        section: the ``websocket:`` section (``routes`` with a ``channel`` each).
    """
    return sorted({route.channel for route in section.routes})


def conversation_key(message: dict[str, Any]) -> Hashable | None:
    """One connection: every message of a connection carries its ``reply_channel``."""
    return message.get("reply_channel")
