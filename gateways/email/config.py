"""The ``email:`` section of the configuration file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateways.core.config import (
    GatewaySection,
    channel_name,
    check_url,
    config_file,
    host_port,
    non_negative,
    positive,
    regex,
    setting,
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

    channel: str = channel_name("", "channel the matching messages go to", required=True)
    address: str | None = regex(None, "regular expression matched (fullmatch, lower case) "
                                "against the recipient address")
    domain: str | None = regex(None, "regular expression matched (fullmatch, lower case) "
                               "against the recipient's domain")
    subject: str | None = regex(None, "regular expression searched for in the decoded Subject")


@dataclass
class EmailSection(GatewaySection):
    """How the email gateway receives mail over SMTP and sends it through a relay."""

    listen: str = host_port("", "HOST:PORT of the SMTP listener", required=True)
    domains: list[str] = setting([], "domains mail is accepted for (`*.example.com` for subdomains); "
                                 "others get 550 5.1.1", check=check_domain, required=True)
    addresses: list[str] = regex([], "when set, only recipients matching one of these "
                                 "regular expressions are accepted")
    relay: str = setting("", "where email.send goes: smtp://[user:pass@]host:port[?starttls=require|off], "
                         "smtps://host:port, console://, file://DIR (a Maildir)", check=check_relay, required=True)
    hostname: str = setting("", "name in the greeting and EHLO; the FQDN when empty")
    routes: list[EmailRoute] = setting([], "inbound routes, first match per recipient wins")
    default_channel: str = channel_name("email.receive", "channel of mail no route matches")
    send_channel: str = channel_name("email.send", "channel consumers send email.send on "
                                     "(besides a message's reply_channel)")
    dead_letter_channel: str = channel_name("email.dead", "channel a message goes to when its hand-offs are spent")
    spool: str = setting("var/email-spool", "directory of the durable inbound spool, relative to the config file")
    ack_timeout: float = positive(60.0, "seconds to wait for email.ack before handing a message again "
                                  "(doubles each time)")
    handoff_linger: float = non_negative(0.01, "seconds a new message waits for others to be handed to the layer "
                                         "with it (fewer round trips for the layer and the consumers); 0: at once")
    max_attempts: int = positive(8, "hand-offs of one message before it goes to the dead-letter channel")
    max_message_size: int = positive(10 * 1024 * 1024, "bytes; larger mail gets 552 5.3.4 "
                                     "(announced in EHLO SIZE)")
    max_recipients: int = positive(100, "recipients per message; more get 452 4.5.3")
    timeout: float = positive(300.0, "seconds a connection may stay idle between commands")
    max_connections: int = positive(200, "concurrent SMTP connections; more get 421")
    tls_cert: str | None = config_file("PEM certificate for STARTTLS")
    tls_key: str | None = config_file("PEM private key for STARTTLS")
    require_starttls: bool = setting(False, "refuse mail transactions before STARTTLS")
    auth_users: dict[str, str] = setting({}, "AUTH PLAIN/LOGIN user -> password (use ${ENV}); "
                                         "AUTH is off when empty and auth_file unset")
    auth_file: str | None = config_file("file of `user:password` lines, read at start (with auth_users)")
    auth_required: bool = setting(False, "refuse mail from clients that did not AUTH")
    lmtp_listen: str | None = host_port(None, "HOST:PORT of an LMTP listener (behind Postfix); off when unset")
    senders: list[str] = setting([], "allowed email.send From: `user@domain` or `@domain`; default: "
                                 "@ each of domains", check=check_sender)
    relay_timeout: float = positive(30.0, "seconds for each relay conversation step")
    relay_attempts: int = positive(6, "delivery attempts of one email.send on transient failures "
                                   "(4xx, connection errors)")
    relay_retry_initial: float = positive(1.0, "seconds before the first relay retry (doubles)")
    relay_retry_max: float = positive(300.0, "longest pause between relay retries")
    relay_verify_tls: bool = setting(True, "verify the relay's TLS certificate")

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
