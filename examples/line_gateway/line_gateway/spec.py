"""Route the ``line.*`` messages of ``line.md``: pure, stdlib only.

What ``gateway worker`` needs to know of the line gateway's messages, beside
the spec (this module's package holds ``line.md`` and ``line.schema.json``).
"""

from __future__ import annotations

from typing import Any, Hashable

__all__ = ["consumer_channels", "conversation_key"]


def consumer_channels(section: Any) -> list[str]:
    """The one channel every line goes to.

    Args:
        section: the ``line:`` section.
    """
    return [section.channel]


def conversation_key(message: dict[str, Any]) -> Hashable | None:
    """One connection: its messages carry its ``reply_channel``."""
    return message.get("reply_channel")
