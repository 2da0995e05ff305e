"""The ``slack:`` configuration section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gateways.core.config import (
    GatewaySection,
    channel_name,
    host_port,
    non_negative,
    positive,
    regex,
    setting,
    url,
)


@dataclass
class SlackRoute:
    """One routing rule: inbound messages that match go to ``channel``.

    Every condition given must hold; a rule with no condition matches all.
    """

    channel: str = channel_name("", "channel-layer channel the matching messages go to", required=True)
    types: list[str] = setting([], "message types to match, e.g. slack.message, slack.command; empty: any")
    slack_channels: list[str] = setting([], "Slack channel ids to match (C0123...); empty: any")
    text: str | None = regex(None, "regular expression searched in the message text (or a command's text)")
    commands: list[str] = setting([], "slash commands to match, e.g. /deploy; empty: any")


@dataclass
class SlackSection(GatewaySection):
    """How the Slack gateway connects to Slack and where its messages go."""

    renamed_keys: ClassVar[dict[str, str]] = {"outbound_channel": "send_channel"}

    app_token: str = setting("", "app-level token (xapp-...) for Socket Mode; use ${SLACK_APP_TOKEN}")
    bot_token: str = setting("", "bot token (xoxb-...) for Web API calls; use ${SLACK_BOT_TOKEN}")
    api_url: str = url("https://slack.com/api/", "base URL of every Web API call, apps.connections.open included "
                       "(point it at a local stand-in for tests)", ("http", "https"))
    socket_mode: bool = setting(True, "receive events over Socket Mode (needs app_token)")
    listen: str | None = host_port(None, "HOST:PORT of the Events API HTTP listener (needs signing_secret); "
                                   "off when unset")
    events_path: str = setting("/slack/events", "path of the Events API request URL "
                               "(events, slash commands and interactivity)")
    signing_secret: str = setting("", "signing secret that verifies Events API requests; "
                                  "use ${SLACK_SIGNING_SECRET}")
    signature_window: float = positive(300.0, "seconds a request timestamp may differ from now (replay window)")
    ping_interval: float = positive(5.0, "seconds between Socket Mode pings; "
                                    "a link silent for 4 of them is reconnected")
    ack_timeout: float = positive(2.5, "seconds to wait for a consumer's slack.ack to slash commands, "
                                  "view submissions and options requests (Slack gives up at 3)")
    dedup_ttl: int = positive(3600, "seconds an event id is remembered, so Slack's retries reach consumers once")
    dedup_url: str | None = url(None, "Redis URL of the dedup store shared by all instances; unset: "
                                "the layer's Redis", ("redis", "rediss", "unix"))
    routes: list[SlackRoute] = setting([], "routing rules, first match wins")
    default_channel: str | None = channel_name("slack.receive", "channel for messages no route matches; unset: "
                                               "they are acked, logged and counted")
    send_channel: str = channel_name("slack.send", "channel consumers send slack.send to "
                                     "(every inbound message's reply_channel); formerly outbound_channel")
    api_timeout: float = positive(10.0, "seconds one Web API request may take")
    api_retries: int = non_negative(3, "retries of a Web API call after 429 or a network error")
    max_retry_after: float = positive(60.0, "longest Retry-After the gateway waits before reporting ratelimited")

    def problems(self) -> list[tuple[str, str]]:
        """Cross-field checks; missing tokens are reported when the daemon starts,
        so a demo file without them still validates."""
        out: list[tuple[str, str]] = []
        if self.app_token and not self.app_token.startswith("xapp-"):
            out.append(("app_token", "an app-level token starts with xapp-"))
        if self.bot_token and not self.bot_token.startswith(("xoxb-", "xoxp-")):
            out.append(("bot_token", "a bot token starts with xoxb- (or xoxp- for a user token)"))
        if self.listen and not self.signing_secret:
            out.append(("signing_secret", "the Events API listener needs the signing secret"))
        if not self.events_path.startswith("/"):
            out.append(("events_path", "must start with /"))
        if self.send_channel in {r.channel for r in self.routes} | {self.default_channel}:
            out.append(("send_channel", "must differ from every inbound channel"))
        return out

    def missing(self) -> str | None:
        """Why the daemon cannot run with these keys, or None."""
        if not self.bot_token and not self.app_token:
            return "no Slack tokens (SLACK_APP_TOKEN, SLACK_BOT_TOKEN)"
        if not self.bot_token:
            return "slack.bot_token is empty (set SLACK_BOT_TOKEN)"
        if self.socket_mode and not self.app_token:
            return "slack.app_token is empty (set SLACK_APP_TOKEN) and socket_mode is on"
        if not self.socket_mode and not self.listen:
            return "neither socket_mode nor listen is set: the gateway would receive nothing"
        return None
