"""The ``websocket:`` section."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateways.core.config import GatewaySection, channel_name, host_port, positive, regex, setting
from gateways.websocket.protocol import Route


@dataclass
class WebSocketRoute:
    """Connections whose path matches ``path`` go to ``channel``."""

    path: str = regex("", "regular expression the whole path must match; "
                      "named groups become kwargs", required=True)
    channel: str = channel_name("", "channel for this route's websocket.* messages", required=True)
    auto_accept: bool = setting(False, "complete the handshake without waiting for websocket.accept; "
                                "websocket.connect then says accepted: true, "
                                "and a consumer's accept only sets state")

    def compiled(self) -> Route:
        """The route as the translation module uses it."""
        return Route(re.compile(self.path), self.channel, self.auto_accept)


@dataclass
class WebSocketSection(GatewaySection):
    """The WebSocket gateway's settings."""

    listen: str = host_port("127.0.0.1:8765", "HOST:PORT to listen on")
    routes: list[WebSocketRoute] = setting([], "path routes, first match wins; no match gets HTTP 404")
    accept_timeout: float = positive(10.0, "seconds to wait for websocket.accept before rejecting with HTTP 503")
    max_message_size: int = positive(1048576, "largest incoming message in bytes; larger closes with 1009")
    max_connections: int = positive(10000, "open connections at most; more get HTTP 503")
    allowed_origins: list[str] = setting([], "Origin header values allowed (exact, or * for any); "
                                         "empty allows all; others get 403")
    ping_interval: float | None = setting(20.0, "seconds between pings; null turns pings off")
    ping_timeout: float | None = setting(20.0, "seconds to wait for a pong before closing 1011")
    send_queue: int = positive(1024, "messages queued for a slow client before it is closed with 1013")
    group_refresh: float = positive(3600.0, "seconds between re-adding open connections to their groups, "
                                    "so memberships outlive layer.group_expiry and a Redis restart")
    instance_timeout: float = positive(30.0, "seconds without a heartbeat after which an instance counts as "
                                       "dead: another instance (or its restart) tells its connections' consumers "
                                       "(websocket.disconnect, 1006) and removes them from their groups")

    def problems(self) -> list[tuple[str, str]]:
        """Cross-key problems."""
        found = []
        if not self.routes:
            found.append(("routes", "at least one route is needed"))
        return found
