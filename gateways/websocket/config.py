"""The ``websocket:`` section."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateways.core.config import (
    GatewaySection,
    check_channel_name,
    check_host_port,
    check_positive,
    check_regex,
)
from gateways.websocket.protocol import Route


@dataclass
class WebSocketRoute:
    """Connections whose path matches ``path`` go to ``channel``."""

    path: str = field(
        default="",
        metadata={"doc": "regular expression the whole path must match; named groups become kwargs",
                  "required": True, "check": check_regex},
    )
    channel: str = field(
        default="",
        metadata={"doc": "channel for this route's websocket.* messages", "required": True,
                  "check": check_channel_name},
    )
    auto_accept: bool = field(
        default=False,
        metadata={"doc": "complete the handshake without waiting for websocket.accept; "
                  "websocket.connect then says accepted: true, and a consumer's accept only sets state"}
    )

    def compiled(self) -> Route:
        """The route as the translation module uses it."""
        return Route(re.compile(self.path), self.channel, self.auto_accept)


@dataclass
class WebSocketSection(GatewaySection):
    """The WebSocket gateway's settings."""

    listen: str = field(
        default="127.0.0.1:8765", metadata={"doc": "HOST:PORT to listen on", "check": check_host_port}
    )
    routes: list[WebSocketRoute] = field(
        default_factory=list, metadata={"doc": "path routes, first match wins; no match gets HTTP 404"}
    )
    accept_timeout: float = field(
        default=10.0,
        metadata={"doc": "seconds to wait for websocket.accept before rejecting with HTTP 503",
                  "check": check_positive},
    )
    max_message_size: int = field(
        default=1048576,
        metadata={"doc": "largest incoming message in bytes; larger closes with 1009", "check": check_positive},
    )
    max_connections: int = field(
        default=10000,
        metadata={"doc": "open connections at most; more get HTTP 503", "check": check_positive},
    )
    allowed_origins: list[str] = field(
        default_factory=list,
        metadata={"doc": "Origin header values allowed (exact, or * for any); empty allows all; others get 403"},
    )
    ping_interval: float | None = field(
        default=20.0, metadata={"doc": "seconds between pings; null turns pings off"}
    )
    ping_timeout: float | None = field(
        default=20.0, metadata={"doc": "seconds to wait for a pong before closing 1011"}
    )
    send_queue: int = field(
        default=1024,
        metadata={"doc": "messages queued for a slow client before it is closed with 1013",
                  "check": check_positive},
    )
    group_refresh: float = field(
        default=3600.0,
        metadata={"doc": "seconds between re-adding open connections to their groups, "
                  "so memberships outlive layer.group_expiry and a Redis restart", "check": check_positive},
    )

    def problems(self) -> list[tuple[str, str]]:
        """Cross-key problems."""
        found = []
        if not self.routes:
            found.append(("routes", "at least one route is needed"))
        return found
