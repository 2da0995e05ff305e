"""The ``mqtt:`` section."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from gateways.core.config import (
    GatewaySection,
    channel_name,
    config_file,
    non_negative,
    positive,
    setting,
    tls_files_problem,
    url,
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

    filter: str = setting("", "topic filter (+ and #; $share/<group>/<filter> to split load between "
                          "instances)", check=filter_problem, required=True)
    qos: Literal[0, 1, 2] = setting(1, "QoS to subscribe at; 2 is served at 1 (with a warning)")
    channel: str = channel_name(PUBLISH, "channel its mqtt.publish messages go to")
    decode: Literal["bytes", "text", "json"] = setting("bytes", "payload as bytes, UTF-8 text or JSON; "
                                                       "one that does not decode arrives as mqtt.undecodable")

    def subscription(self) -> Subscription:
        """The subscription as the translation module uses it."""
        return Subscription(self.filter, self.qos, self.channel, self.decode)


@dataclass
class MqttSection(GatewaySection):
    """The MQTT gateway's settings."""

    broker: str = url("", "mqtt://host[:1883] or mqtts://host[:8883]", ("mqtt", "mqtts"), required=True)
    client_id: str = setting("", "client id, stable per instance so the broker keeps its session across restarts; "
                             "empty: channels-gateway-<hostname>", check=_check_client_id)
    username: str | None = setting(None, "user name (use ${ENV})")
    password: str | None = setting(None, "password (use ${ENV})")
    ca_file: str | None = config_file("CA bundle to verify an mqtts:// broker (system CAs when unset)")
    cert_file: str | None = config_file("client certificate (PEM) for mqtts://")
    key_file: str | None = config_file("client certificate's key (PEM) for mqtts://")
    version: str = setting("5", "MQTT version: 3.1.1 or 5", check=_check_version)
    keepalive: int = positive(60, "seconds between keepalive pings")
    session_expiry: int = non_negative(86400, "seconds the broker keeps the session "
                                       "(subscriptions, queued QoS 1 messages) while the gateway is away; "
                                       "0: a clean session each time")
    subscriptions: list[MqttSubscription] = setting([], "topic filters to subscribe to; "
                                                    "a message goes to the first that matches")
    send_channel: str = channel_name("mqtt.send", "channel consumers send "
                                     "mqtt.publish/subscribe/unsubscribe requests on")
    inflight: int = positive(100, "QoS 1 messages received and not yet acknowledged at most "
                             "(the MQTT 5 receive maximum; PUBACK waits for the layer)")
    qos0_backlog: int = positive(10000, "QoS 0 messages waiting for the layer at most; more are dropped, "
                                 "logged and counted")
    outage_queue: int = positive(1000, "requests from consumers held while the broker is unreachable; "
                                 "beyond it they fail with an mqtt.result")
    publish_timeout: float = positive(30.0, "seconds to wait for the broker to confirm a publish, "
                                      "subscribe or unsubscribe")
    reconnect_max: float = positive(30.0, "longest wait between reconnect attempts, in seconds")

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
