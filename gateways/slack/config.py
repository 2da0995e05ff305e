"""The ``slack:`` configuration section."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateways.core.config import (
    GatewaySection,
    check_channel_name,
    check_host_port,
    check_non_negative,
    check_positive,
    check_regex,
    check_url,
)


@dataclass
class SlackRoute:
    """One routing rule: inbound messages that match go to ``channel``.

    Every condition given must hold; a rule with no condition matches all.
    """

    channel: str = field(
        default="",
        metadata={"doc": "channel-layer channel the matching messages go to",
                  "check": check_channel_name, "required": True},
    )
    types: list[str] = field(
        default_factory=list,
        metadata={"doc": "message types to match, e.g. slack.message, slack.command; empty: any"},
    )
    slack_channels: list[str] = field(
        default_factory=list,
        metadata={"doc": "Slack channel ids to match (C0123...); empty: any"},
    )
    text: str | None = field(
        default=None,
        metadata={"doc": "regular expression searched in the message text (or a command's text)",
                  "check": check_regex},
    )
    commands: list[str] = field(
        default_factory=list,
        metadata={"doc": "slash commands to match, e.g. /deploy; empty: any"},
    )


@dataclass
class SlackSection(GatewaySection):
    """How the Slack gateway connects to Slack and where its messages go."""

    app_token: str = field(
        default="",
        metadata={"doc": "app-level token (xapp-...) for Socket Mode; use ${SLACK_APP_TOKEN}"},
    )
    bot_token: str = field(
        default="",
        metadata={"doc": "bot token (xoxb-...) for Web API calls; use ${SLACK_BOT_TOKEN}"},
    )
    api_url: str = field(
        default="https://slack.com/api/",
        metadata={"doc": "base URL of every Web API call, apps.connections.open included "
                         "(point it at a local stand-in for tests)",
                  "check": check_url("http", "https")},
    )
    socket_mode: bool = field(
        default=True,
        metadata={"doc": "receive events over Socket Mode (needs app_token)"},
    )
    listen: str | None = field(
        default=None,
        metadata={"doc": "HOST:PORT of the Events API HTTP listener (needs signing_secret); off when unset",
                  "check": check_host_port},
    )
    events_path: str = field(
        default="/slack/events",
        metadata={"doc": "path of the Events API request URL (events, slash commands and interactivity)"},
    )
    signing_secret: str = field(
        default="",
        metadata={"doc": "signing secret that verifies Events API requests; use ${SLACK_SIGNING_SECRET}"},
    )
    signature_window: float = field(
        default=300.0,
        metadata={"doc": "seconds a request timestamp may differ from now (replay window)",
                  "check": check_positive},
    )
    ping_interval: float = field(
        default=5.0,
        metadata={"doc": "seconds between Socket Mode pings; a link silent for 4 of them is reconnected",
                  "check": check_positive},
    )
    ack_timeout: float = field(
        default=2.5,
        metadata={"doc": "seconds to wait for a consumer's slack.ack to slash commands, view "
                         "submissions and options requests (Slack gives up at 3)",
                  "check": check_positive},
    )
    dedup_ttl: int = field(
        default=3600,
        metadata={"doc": "seconds an event id is remembered, so Slack's retries reach consumers once",
                  "check": check_positive},
    )
    dedup_url: str | None = field(
        default=None,
        metadata={"doc": "Redis URL of the dedup store shared by all instances; unset: the layer's Redis",
                  "check": check_url("redis", "rediss", "unix")},
    )
    routes: list[SlackRoute] = field(
        default_factory=list,
        metadata={"doc": "routing rules, first match wins"},
    )
    default_channel: str | None = field(
        default="slack.receive",
        metadata={"doc": "channel for messages no route matches; unset: they are acked, logged and counted",
                  "check": check_channel_name},
    )
    outbound_channel: str = field(
        default="slack.send",
        metadata={"doc": "channel consumers send slack.send to (every inbound message's reply_channel)",
                  "check": check_channel_name},
    )
    api_timeout: float = field(
        default=10.0,
        metadata={"doc": "seconds one Web API request may take", "check": check_positive},
    )
    api_retries: int = field(
        default=3,
        metadata={"doc": "retries of a Web API call after 429 or a network error", "check": check_non_negative},
    )
    max_retry_after: float = field(
        default=60.0,
        metadata={"doc": "longest Retry-After the gateway waits before reporting ratelimited",
                  "check": check_positive},
    )

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
        if self.outbound_channel in {r.channel for r in self.routes} | {self.default_channel}:
            out.append(("outbound_channel", "must differ from every inbound channel"))
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
