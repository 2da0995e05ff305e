"""The ``mqtt:`` section."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from gateways.core.config import (
    GatewaySection,
    check_channel_name,
    check_non_negative,
    check_positive,
    check_url,
    tls_files_problem,
)
from gateways.mqtt.protocol import PUBLISH, Subscription, filter_problem

VERSIONS = ("3.1.1", "5", "5.0")


def _check_version(value: str) -> str | None:
    return None if value in VERSIONS else f"{value!r} is not an MQTT version (3.1.1 or 5)"


def _check_client_id(value: str) -> str | None:
    if value and not re.fullmatch(r"[\x21-\x7e]{1,128}", value):
        return f"{value!r}: a client id is 1-128 printable ASCII characters without spaces"
    return None


@dataclass
class MqttSubscription:
    """A topic filter the gateway subscribes to and the channel its messages go to."""

    filter: str = field(
        default="",
        metadata={"doc": "topic filter (+ and #; $share/<group>/<filter> to split load between instances)",
                  "required": True, "check": filter_problem},
    )
    qos: Literal[0, 1, 2] = field(
        default=1, metadata={"doc": "QoS to subscribe at; 2 is served at 1 (with a warning)"}
    )
    channel: str = field(
        default=PUBLISH, metadata={"doc": "channel its mqtt.publish messages go to", "check": check_channel_name}
    )
    decode: Literal["bytes", "text", "json"] = field(
        default="bytes",
        metadata={"doc": "payload as bytes, UTF-8 text or JSON; one that does not decode arrives as "
                         "mqtt.undecodable"},
    )

    def subscription(self) -> Subscription:
        """The subscription as the translation module uses it."""
        return Subscription(self.filter, self.qos, self.channel, self.decode)


@dataclass
class MqttSection(GatewaySection):
    """The MQTT gateway's settings."""

    broker: str = field(
        default="",
        metadata={"doc": "mqtt://host[:1883] or mqtts://host[:8883]", "required": True,
                  "check": check_url("mqtt", "mqtts")},
    )
    client_id: str = field(
        default="",
        metadata={"doc": "client id, stable per instance so the broker keeps its session across restarts; "
                         "empty: channels-gateway-<hostname>", "check": _check_client_id},
    )
    username: str | None = field(default=None, metadata={"doc": "user name (use ${ENV})"})
    password: str | None = field(default=None, metadata={"doc": "password (use ${ENV})"})
    ca_file: str | None = field(
        default=None, metadata={"doc": "CA bundle to verify an mqtts:// broker (system CAs when unset); "
                                       "relative to the config file", "file": True}
    )
    cert_file: str | None = field(default=None, metadata={"doc": "client certificate (PEM) for mqtts://; "
                                                                 "relative to the config file", "file": True})
    key_file: str | None = field(default=None, metadata={"doc": "client certificate's key (PEM) for mqtts://; "
                                                                "relative to the config file", "file": True})
    version: str = field(default="5", metadata={"doc": "MQTT version: 3.1.1 or 5", "check": _check_version})
    keepalive: int = field(
        default=60, metadata={"doc": "seconds between keepalive pings", "check": check_positive}
    )
    session_expiry: int = field(
        default=86400,
        metadata={"doc": "seconds the broker keeps the session (subscriptions, queued QoS 1 messages) while "
                         "the gateway is away; 0: a clean session each time", "check": check_non_negative},
    )
    subscriptions: list[MqttSubscription] = field(
        default_factory=list,
        metadata={"doc": "topic filters to subscribe to; a message goes to the first that matches"},
    )
    send_channel: str = field(
        default="mqtt.send",
        metadata={"doc": "channel consumers send mqtt.publish/subscribe/unsubscribe requests on",
                  "check": check_channel_name},
    )
    inflight: int = field(
        default=100,
        metadata={"doc": "QoS 1 messages received and not yet acknowledged at most (the MQTT 5 receive "
                         "maximum; PUBACK waits for the layer)", "check": check_positive},
    )
    qos0_backlog: int = field(
        default=10000,
        metadata={"doc": "QoS 0 messages waiting for the layer at most; more are dropped, logged and counted",
                  "check": check_positive},
    )
    outage_queue: int = field(
        default=1000,
        metadata={"doc": "requests from consumers held while the broker is unreachable; beyond it they "
                         "fail with an mqtt.result", "check": check_positive},
    )
    publish_timeout: float = field(
        default=30.0,
        metadata={"doc": "seconds to wait for the broker to confirm a publish, subscribe or unsubscribe",
                  "check": check_positive},
    )
    reconnect_max: float = field(
        default=30.0, metadata={"doc": "longest wait between reconnect attempts, in seconds",
                                "check": check_positive},
    )

    def problems(self) -> list[tuple[str, str]]:
        """Cross-field problems."""
        out = []
        filters = [s.filter for s in self.subscriptions]
        for duplicate in sorted({f for f in filters if filters.count(f) > 1}):
            out.append(("subscriptions", f"filter {duplicate!r} is listed twice"))
        if self.send_channel in {s.channel for s in self.subscriptions} | {PUBLISH}:
            out.append(("send_channel", "must differ from every inbound channel"))
        tls_files = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k)]
        if tls_files and urlsplit(self.broker).scheme != "mqtts":
            out.append((tls_files[0], "TLS files need an mqtts:// broker"))
        if self.key_file and not self.cert_file:
            out.append(("key_file", "a key needs cert_file"))
        elif problem := tls_files_problem(self.cert_file, self.key_file, self.ca_file):
            out.append(("cert_file" if self.cert_file else "ca_file", problem))
        if self.password is not None and self.username is None:
            out.append(("password", "a password needs a username"))
        if self.version == "3.1.1" and any(s.filter.startswith("$share/") for s in self.subscriptions):
            out.append(("subscriptions", "shared subscriptions ($share/...) need MQTT version 5"))
        return out

    # -- derived values ---------------------------------------------------

    @property
    def host(self) -> str:
        """The broker's host name."""
        return urlsplit(self.broker).hostname or "localhost"

    @property
    def port(self) -> int:
        """The broker's port (1883, or 8883 for mqtts://, when the URL has none)."""
        parts = urlsplit(self.broker)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        """Whether the broker URL asks for TLS."""
        return urlsplit(self.broker).scheme == "mqtts"

    @property
    def mqtt5(self) -> bool:
        """Whether to speak MQTT 5."""
        return self.version != "3.1.1"

    @property
    def identifier(self) -> str:
        """The client id to connect with."""
        return self.client_id or f"channels-gateway-{socket.gethostname()}"

    def configured_subscriptions(self) -> list[Subscription]:
        """The configured subscriptions, in priority order."""
        return [s.subscription() for s in self.subscriptions]
