"""Route the ``slack.*`` messages of ``slack.md``: pure, stdlib only.

What ``gateway worker`` (which runs only Django consumers, without slack_sdk)
needs to know of the Slack gateway's messages, kept next to the spec: which
channels Django workers consume and the conversation of a message.
"""

from __future__ import annotations

from typing import Any, Hashable

__all__ = ["consumer_channels", "conversation_key"]


def consumer_channels(section: Any) -> list[str]:
    """Every route's channel, then the default channel (when set), each once.

    Args:
        section: the ``slack:`` section (``routes`` with a ``channel`` each,
            and ``default_channel``).
    """
    channels = [r.channel for r in section.routes]
    if section.default_channel:
        channels.append(section.default_channel)
    return list(dict.fromkeys(channels))


def conversation_key(message: dict[str, Any]) -> Hashable | None:
    """One Slack channel of one workspace (the spec's ordering unit); None for
    messages without a channel, which keep no order."""
    channel = message.get("channel")
    return (message.get("team"), channel) if channel else None
