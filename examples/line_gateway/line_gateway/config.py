"""The ``line:`` section."""

from __future__ import annotations

from dataclasses import dataclass

from gateways.core.config import GatewaySection, channel_name, host_port, positive


@dataclass
class LineSection(GatewaySection):
    """The line gateway's settings."""

    listen: str = host_port("127.0.0.1:7000", "HOST:PORT to listen on")
    channel: str = channel_name("line.receive", "channel every received line goes to")
    max_line_length: int = positive(4096, "longest line in bytes; a longer one is answered ERR too long")
