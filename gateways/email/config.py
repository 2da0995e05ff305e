"""The ``email:`` section of the configuration file."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateways.core.config import (
    GatewaySection,
    check_channel_name,
    check_host_port,
    check_non_negative,
    check_positive,
    check_regex,
    check_url,
    tls_files_problem,
)

#: The relay URL schemes: real SMTP, and the development relays.
RELAY_SCHEMES = ("smtp", "smtps", "console", "file")

_DOMAIN = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def check_domain(value: str) -> str | None:
    """A domain name such as ``example.com`` or ``*.example.com`` (lower case)."""
    if not _DOMAIN.fullmatch(value):
        return f"{value!r} is not a lower-case domain name (or *.domain)"
    return None


def check_relay(value: str) -> str | None:
    """A relay URL: smtp://, smtps://, file://DIR, or console:// (which needs no location)."""
    if urlsplit(value).scheme == "console":
        return None
    return check_url(*RELAY_SCHEMES)(value)


def check_sender(value: str) -> str | None:
    """An allowed sender: ``user@domain`` or ``@domain``."""
    local, at, domain = value.rpartition("@")
    if not at or not domain or check_domain(domain.lower()):
        return f"{value!r} is not an address (user@domain) or a domain (@domain)"
    return None


@dataclass
class EmailRoute:
    """One inbound route: which recipients (and subjects) go to which channel.

    A route matches a recipient when every pattern it sets matches; its named
    groups are passed on in the message's ``route_kwargs``.
    """

    channel: str = field(
        default="",
        metadata={"doc": "channel the matching messages go to", "required": True, "check": check_channel_name},
    )
    address: str | None = field(
        default=None,
        metadata={"doc": "regular expression matched (fullmatch, lower case) against the recipient address",
                  "check": check_regex},
    )
    domain: str | None = field(
        default=None,
        metadata={"doc": "regular expression matched (fullmatch, lower case) against the recipient's domain",
                  "check": check_regex},
    )
    subject: str | None = field(
        default=None,
        metadata={"doc": "regular expression searched for in the decoded Subject", "check": check_regex},
    )


@dataclass
class EmailSection(GatewaySection):
    """How the email gateway receives mail over SMTP and sends it through a relay."""

    listen: str = field(
        default="",
        metadata={"doc": "HOST:PORT of the SMTP listener", "required": True, "check": check_host_port},
    )
    domains: list[str] = field(
        default_factory=list,
        metadata={"doc": "domains mail is accepted for (`*.example.com` for subdomains); others get 550 5.1.1",
                  "required": True, "check": check_domain},
    )
    addresses: list[str] = field(
        default_factory=list,
        metadata={"doc": "when set, only recipients matching one of these regular expressions are accepted",
                  "check": check_regex},
    )
    relay: str = field(
        default="",
        metadata={"doc": "where email.send goes: smtp://[user:pass@]host:port[?starttls=require|off], "
                  "smtps://host:port, console://, file://DIR (a Maildir)",
                  "required": True, "check": check_relay},
    )
    hostname: str = field(default="", metadata={"doc": "name in the greeting and EHLO; the FQDN when empty"})
    routes: list[EmailRoute] = field(
        default_factory=list,
        metadata={"doc": "inbound routes, first match per recipient wins"},
    )
    default_channel: str = field(
        default="email.receive",
        metadata={"doc": "channel of mail no route matches", "check": check_channel_name},
    )
    send_channel: str = field(
        default="email.send",
        metadata={"doc": "channel consumers send email.send on (besides a message's reply_channel)",
                  "check": check_channel_name},
    )
    dead_letter_channel: str = field(
        default="email.dead",
        metadata={"doc": "channel a message goes to when its hand-offs are spent", "check": check_channel_name},
    )
    spool: str = field(
        default="var/email-spool",
        metadata={"doc": "directory of the durable inbound spool, relative to the config file"},
    )
    ack_timeout: float = field(
        default=60.0,
        metadata={"doc": "seconds to wait for email.ack before handing a message again (doubles each time)",
                  "check": check_positive},
    )
    handoff_linger: float = field(
        default=0.01,
        metadata={"doc": "seconds a new message waits for others to be handed to the layer with it "
                         "(fewer round trips for the layer and the consumers); 0: at once",
                  "check": check_non_negative},
    )
    max_attempts: int = field(
        default=8,
        metadata={"doc": "hand-offs of one message before it goes to the dead-letter channel",
                  "check": check_positive},
    )
    max_message_size: int = field(
        default=10 * 1024 * 1024,
        metadata={"doc": "bytes; larger mail gets 552 5.3.4 (announced in EHLO SIZE)", "check": check_positive},
    )
    max_recipients: int = field(
        default=100, metadata={"doc": "recipients per message; more get 452 4.5.3", "check": check_positive}
    )
    timeout: float = field(
        default=300.0,
        metadata={"doc": "seconds a connection may stay idle between commands", "check": check_positive},
    )
    max_connections: int = field(
        default=200, metadata={"doc": "concurrent SMTP connections; more get 421", "check": check_positive}
    )
    tls_cert: str | None = field(default=None, metadata={"doc": "PEM certificate for STARTTLS, relative to "
                                                                "the config file", "file": True})
    tls_key: str | None = field(default=None, metadata={"doc": "PEM private key for STARTTLS, relative to the "
                                                               "config file", "file": True})
    require_starttls: bool = field(
        default=False, metadata={"doc": "refuse mail transactions before STARTTLS"}
    )
    auth_users: dict[str, str] = field(
        default_factory=dict,
        metadata={"doc": "AUTH PLAIN/LOGIN user -> password (use ${ENV}); AUTH is off when empty and auth_file unset"},
    )
    auth_file: str | None = field(
        default=None, metadata={"doc": "file of `user:password` lines, read at start (with auth_users); "
                                       "relative to the config file", "file": True}
    )
    auth_required: bool = field(
        default=False, metadata={"doc": "refuse mail from clients that did not AUTH"}
    )
    lmtp_listen: str | None = field(
        default=None,
        metadata={"doc": "HOST:PORT of an LMTP listener (behind Postfix); off when unset",
                  "check": check_host_port},
    )
    senders: list[str] = field(
        default_factory=list,
        metadata={"doc": "allowed email.send From: `user@domain` or `@domain`; default: @ each of domains",
                  "check": check_sender},
    )
    relay_timeout: float = field(
        default=30.0, metadata={"doc": "seconds for each relay conversation step", "check": check_positive}
    )
    relay_attempts: int = field(
        default=6,
        metadata={"doc": "delivery attempts of one email.send on transient failures (4xx, connection errors)",
                  "check": check_positive},
    )
    relay_retry_initial: float = field(
        default=1.0, metadata={"doc": "seconds before the first relay retry (doubles)", "check": check_positive}
    )
    relay_retry_max: float = field(
        default=300.0, metadata={"doc": "longest pause between relay retries", "check": check_positive}
    )
    relay_verify_tls: bool = field(default=True, metadata={"doc": "verify the relay's TLS certificate"})

    def problems(self) -> list[tuple[str, str]]:
        """Cross-field problems."""
        found = []
        if bool(self.tls_cert) != bool(self.tls_key):
            found.append(("tls_cert", "tls_cert and tls_key go together"))
        elif self.tls_cert and (problem := tls_files_problem(self.tls_cert, self.tls_key)):
            found.append(("tls_cert", problem))
        if self.require_starttls and not self.tls_cert:
            found.append(("require_starttls", "needs tls_cert and tls_key"))
        if self.auth_required and not (self.auth_users or self.auth_file):
            found.append(("auth_required", "needs auth_users or auth_file"))
        if (self.auth_users or self.auth_file) and not self.tls_cert:
            found.append(("auth_users", "AUTH is offered only after STARTTLS: set tls_cert and tls_key"))
        if self.relay.startswith(("smtp:", "smtps:")) and not urlsplit(self.relay).hostname:
            found.append(("relay", f"{self.relay!r} names no host"))
        # Name the inbound key that collides (a route's channel, default_channel),
        # so the error points at the line to change, not at the section.
        clash = f"is email.send_channel ({self.send_channel!r}): inbound and outbound channels must differ"
        for index, route in enumerate(self.routes):
            if route.channel == self.send_channel:
                found.append((f"routes[{index}].channel", clash))
        if self.default_channel == self.send_channel:
            found.append(("default_channel", clash))
        return found

    def allowed_senders(self) -> list[str]:
        """The configured senders, or ``@domain`` for each accepted domain."""
        return [s.lower() for s in self.senders] or [f"@{d}" for d in self.domains]
