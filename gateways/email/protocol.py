"""Email <-> channel messages, without I/O: what only the gateway decides.

Inbound: the smuggling check and recipient policy on the SMTP transaction,
and :class:`Router`, which chooses the channels of a message. Outbound:
:func:`build_outbound` turns an ``email.send`` into the envelope and bytes a
relay gets, and :func:`refused_author` holds it to ``email.senders``.

Building and reading the messages themselves (``email.receive`` from raw
bytes, the MIME of an ``email.send``, ``email.sent``/``email.failed``) is
:mod:`protocol_specs.email`, shared with consumers; the names this gateway
uses from it are re-exported here. See ``protocol_specs/email.md`` for the
messages.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from protocol_specs.email import (
    Delivery,
    Envelope,
    OutboundError,
    address_domain,
    compose_message,
    decode_header,
    failed_message,
    parse_message,
    receive_message,
    send_recipients,
    sent_message,
    single_line,
)

__all__ = [
    "AUTHOR_HEADERS", "Delivery", "Envelope", "Outbound", "OutboundError", "RecipientPolicy", "Route", "Router",
    "address_domain", "build_outbound", "domain_matches", "failed_message", "header_authors", "header_subject",
    "line_ending_problem", "parse_message", "receive_message", "refused_author", "sender_allowed",
    "sent_message",
]


# --------------------------------------------------------------------------
# Inbound: checks on the SMTP transaction.


def line_ending_problem(data: bytes) -> str | None:
    """Why ``data`` (DATA content) must be refused, or ``None``.

    A bare LF or bare CR is how SMTP smuggling hides a second message
    (``\\n.\\r\\n``): servers disagree on where DATA ends. RFC 5321 allows
    only CRLF, so the gateway refuses any other line ending.
    """
    # Every LF and every CR is part of a CRLF exactly when the three counts
    # agree (a C scan each, several times cheaper than the regular expressions).
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf:
        return "bare LF in message data; lines must end with CRLF"
    if data.count(b"\r") != crlf:
        return "bare CR in message data; lines must end with CRLF"
    return None


def domain_matches(domain: str, patterns: Iterable[str]) -> bool:
    """Whether ``domain`` is one of ``patterns`` (``*.example.com`` = any subdomain)."""
    for pattern in patterns:
        if pattern.startswith("*."):
            if domain.endswith(pattern[1:]):
                return True
        elif domain == pattern:
            return True
    return False


class RecipientPolicy:
    """Which recipients the gateway accepts: never an open relay.

    Args:
        domains: accepted domains (``*.example.com`` for subdomains).
        addresses: when non-empty, regular expressions one of which the
            whole (lower-case) address must also match.
    """

    def __init__(self, domains: Iterable[str], addresses: Iterable[str] = ()) -> None:
        self.domains = [d.lower() for d in domains]
        self.addresses = [re.compile(a) for a in addresses]

    def accepts(self, address: str) -> bool:
        """Whether mail for ``address`` is accepted."""
        address = address.strip().lower()
        local, at, _ = address.rpartition("@")
        if not at or not local or not domain_matches(address_domain(address), self.domains):
            return False
        return not self.addresses or any(p.fullmatch(address) for p in self.addresses)


# --------------------------------------------------------------------------
# Inbound: routing.


@dataclass(frozen=True)
class Route:
    """A compiled route: recipients (and subjects) matching it go to ``channel``.

    Args:
        channel: the channel name.
        address: pattern fullmatched against the lower-case address.
        domain: pattern fullmatched against the lower-case domain.
        subject: pattern searched for in the decoded subject.
    """

    channel: str
    address: re.Pattern[str] | None = None
    domain: re.Pattern[str] | None = None
    subject: re.Pattern[str] | None = None

    @classmethod
    def compile(cls, channel: str, address: str | None = None, domain: str | None = None,
                subject: str | None = None) -> "Route":
        """A route from pattern strings."""
        return cls(channel, *(re.compile(p) if p else None for p in (address, domain, subject)))

    def match(self, recipient: str, subject: str) -> dict[str, str] | None:
        """The named groups when ``recipient``/``subject`` match, else ``None``."""
        groups: dict[str, str] = {}
        recipient = recipient.lower()
        checks = ((self.address, recipient, True), (self.domain, address_domain(recipient), True),
                  (self.subject, subject, False))
        for pattern, value, whole in checks:
            if pattern is None:
                continue
            found = pattern.fullmatch(value) if whole else pattern.search(value)
            if found is None:
                return None
            groups.update({k: v for k, v in found.groupdict().items() if v is not None})
        return groups


class Router:
    """Chooses channels for a message's recipients; each channel gets it once.

    Args:
        routes: in order; the first that matches a recipient wins.
        default_channel: for recipients no route matches.
    """

    def __init__(self, routes: Iterable[Route], default_channel: str) -> None:
        self.routes = list(routes)
        self.default_channel = default_channel
        #: whether routing needs the subject (else the gateway need not read it)
        self.needs_subject = any(r.subject is not None for r in self.routes)

    def deliveries(self, recipients: Iterable[str], subject: str) -> list[Delivery]:
        """One :class:`Delivery` per channel, in the order recipients reached them."""
        out: dict[str, Delivery] = {}
        for recipient in recipients:
            channel, kwargs = self.default_channel, {}
            for route in self.routes:
                groups = route.match(recipient, subject)
                if groups is not None:
                    channel, kwargs = route.channel, groups
                    break
            delivery = out.setdefault(channel, Delivery(channel, kwargs=kwargs))
            delivery.recipients.append(recipient)
        return list(out.values())


_SUBJECT = re.compile(rb"^subject:[ \t]*((?:.*?)(?:\r?\n[ \t].*?)*)\r?$", re.I | re.M)


def header_subject(raw: bytes) -> str:
    """The decoded Subject, reading only the header block (for routing)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw[:end] if end >= 0 else raw
    found = _SUBJECT.search(head)
    if found is None:
        return ""
    return decode_header(found.group(1).decode("ascii", "surrogateescape")).strip()


# --------------------------------------------------------------------------
# Outbound: email.send into bytes for the relay.


@dataclass
class Outbound:
    """What a relay needs: the envelope and the message bytes.

    Args:
        sender: the envelope sender (``""`` for ``<>``).
        recipients: every envelope recipient (to, cc and bcc).
        data: the message, CRLF line endings.
        message_id: its Message-ID.
        authors: the addresses its author headers name (:data:`AUTHOR_HEADERS`,
            each checked against ``email.senders``, like ``sender``).
    """

    sender: str
    recipients: list[str]
    data: bytes
    message_id: str | None
    #: Who the message says it is from: the addresses of its author headers (AUTHOR_HEADERS).
    authors: list[str] = field(default_factory=list)


def _addr_spec(value: str) -> str:
    _, address = email.utils.parseaddr(value)
    if "@" not in address:
        raise OutboundError(f"{value!r} is not an email address")
    return address


def sender_allowed(address: str, allowed: Iterable[str]) -> bool:
    """Whether ``address`` is one of ``allowed`` (``user@domain`` or ``@domain``)."""
    address = address.lower()
    domain = address_domain(address)
    for entry in allowed:
        if entry.startswith("@"):
            if domain_matches(domain, [entry[1:]]):
                return True
        elif address == entry:
            return True
    return False


#: Headers that say who a message is from, each held to ``email.senders``.
AUTHOR_HEADERS = ("from", "sender", "resent-from", "resent-sender")


def header_authors(raw: bytes) -> list[str]:
    """The addresses every From, Sender, Resent-From and Resent-Sender header of ``raw`` names, in order.

    A header that names no parseable address yields ``""``, which no sender
    policy allows: a reader's mail program may still find an address in it.

    Args:
        raw: an RFC 5322 message (only its header is read).
    """
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    found: list[str] = []
    for name in AUTHOR_HEADERS:
        for value in parsed.get_all(name) or []:
            addresses = [a for _, a in email.utils.getaddresses([decode_header(str(value))])]
            found.extend(a if "@" in a else "" for a in addresses or [""])
    return found


def refused_author(outbound: Outbound, allowed: Iterable[str]) -> str | None:
    """Why ``outbound`` may not go out under the ``allowed`` senders, or None.

    The envelope sender and every address of the author headers (From,
    Sender, Resent-From, Resent-Sender) must be allowed, for a ``raw``
    message as for a built one.
    """
    if not sender_allowed(outbound.sender, allowed):
        return f"envelope sender {outbound.sender!r} is not allowed (email.senders)"
    for author in outbound.authors:
        if not author:
            return "a From or Sender header names no address (email.senders)"
        if not sender_allowed(author, allowed):
            return f"sender {author!r} is not allowed (email.senders)"
    return None




def build_outbound(message: dict[str, Any], *, domain: str) -> Outbound:
    """The relay's envelope and bytes for a valid ``email.send``.

    Args:
        message: the ``email.send``.
        domain: the domain of a generated Message-ID when the envelope
            sender has none (the null sender ``<>``): the gateway's host
            name, found once at start, so that building does no I/O.

    Raises :class:`OutboundError` when the message cannot be built (an
    address without ``@``, a header with a line break, no recipient).
    """
    sender = _envelope_sender(message)
    recipients = _envelope_recipients(message)
    if message.get("raw") is not None:
        return _raw_outbound(message["raw"], sender, recipients)
    data, message_id = compose_message(message, domain=address_domain(sender) or domain)
    # Extra headers may name authors too (a Sender, say): judge what goes out.
    return Outbound(sender, recipients, data, message_id, header_authors(data))


def _envelope_sender(message: dict[str, Any]) -> str:
    """``envelope_from``, else the address of ``from`` (which may hold no line break either way)."""
    sender_header = single_line("from", message["from"])
    sender = message.get("envelope_from")
    return _addr_spec(sender_header) if sender is None else sender


def _envelope_recipients(message: dict[str, Any]) -> list[str]:
    recipients = [_addr_spec(a) for a in send_recipients(message)]
    if not recipients:
        raise OutboundError("no recipient in to, cc or bcc")
    return recipients


def _raw_outbound(raw: bytes, sender: str, recipients: list[str]) -> Outbound:
    """A ``raw`` message goes as it is, in CRLF line endings."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    data = re.sub(rb"\r?\n", b"\r\n", raw)
    # The message says who wrote it in its own headers, not in "from": those count.
    return Outbound(sender, recipients, data, parsed.get("message-id"), header_authors(raw))
