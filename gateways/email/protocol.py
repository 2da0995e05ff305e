"""Email <-> channel messages, without I/O.

Inbound: raw RFC 5322 bytes plus the SMTP envelope become ``email.receive``
(:func:`receive_message`), routed to channels by :class:`Router`. Outbound:
an ``email.send`` becomes the bytes and envelope to hand a relay
(:func:`build_outbound`), and the relay's answer becomes ``email.sent`` or
``email.failed``. Everything here works on plain data so it can be tested
without a socket; see ``protocol_specs/email.md`` for the messages.

Parsing never raises on hostile input: the ``compat32`` parser is lenient,
every decode has a fallback, and the raw bytes always travel with the
message, so a consumer can redo what this module could not.
"""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import email.utils
import re
import time
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from typing import Any, Iterable

#: Header values longer than this are cut in ``headers`` (the raw keeps them).
MAX_HEADER_VALUE = 16 * 1024
#: MIME nesting deeper than this is not walked further (the raw keeps it).
MAX_DEPTH = 32

_UNFOLD = re.compile(r"\r?\n(?=[ \t])")


class OutboundError(ValueError):
    """An ``email.send`` that cannot be turned into a message; ``str()`` says why."""


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


def address_domain(address: str) -> str:
    """The lower-case domain of ``user@domain`` (empty when there is none)."""
    return address.rpartition("@")[2].strip().lower().rstrip(".")


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


@dataclass
class Delivery:
    """One message for one channel: the recipients whose route chose it.

    Args:
        channel: where it goes.
        recipients: the envelope recipients that routed there.
        kwargs: named groups of the first recipient's match.
    """

    channel: str
    recipients: list[str] = field(default_factory=list)
    kwargs: dict[str, str] = field(default_factory=dict)


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


# --------------------------------------------------------------------------
# Inbound: MIME into plain data.


def _fix_8bit(value: str) -> str:
    """Undo the parser's surrogate escapes of raw 8-bit header bytes."""
    try:
        value.encode("utf-8")  # fails only on the parser's surrogates
        return value
    except UnicodeEncodeError:
        pass
    data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in ``charset`` as text; unknown or lying charsets fall back."""
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    try:
        return data.decode(charset or "cp1252", "replace")
    except LookupError:
        return data.decode("cp1252", "replace")


def decode_header(value: Any) -> str:
    """A header value as text: RFC 2047 words decoded, 8-bit bytes guessed."""
    if isinstance(value, email.header.Header):
        value = str(value)
    text = _UNFOLD.sub("", _fix_8bit(str(value)))
    if "=?" not in text:  # no encoded words: most headers, and the cheap path
        return text[:MAX_HEADER_VALUE]
    try:
        decoded = str(email.header.make_header(email.header.decode_header(text)))
    except Exception:  # unknown charset, broken base64: decode word by word
        try:
            chunks = email.header.decode_header(text)
        except Exception:
            return text[:MAX_HEADER_VALUE]
        decoded = "".join(
            chunk if isinstance(chunk, str)
            else _decode_bytes(chunk, charset) if charset else chunk.decode("raw-unicode-escape")
            for chunk, charset in chunks
        )
    return decoded[:MAX_HEADER_VALUE]


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
#: One ``addr-spec`` or ``Display Name <addr-spec>`` made of plain words: most From and To headers.
_PLAIN_ADDRESS = re.compile(rf"[ \t]*(?:((?:{_ATOM}[ \t]+)*{_ATOM})?[ \t]*<({_ADDR_SPEC})>|({_ADDR_SPEC}))[ \t]*")


def _addresses(values: list[str]) -> list[dict[str, str]]:
    """The ``{"name", "address"}`` pairs of address headers, as ``email.utils.getaddresses`` reads them."""
    if len(values) == 1:
        # getaddresses' tokenizer is most of the parse's CPU; a plain address reads the
        # same (tests/email/test_protocol.py compares the two on many forms).
        plain = _PLAIN_ADDRESS.fullmatch(values[0])
        if plain is not None:
            name, address = plain.group(1), plain.group(2) or plain.group(3)
            return [{"name": " ".join(name.split()) if name else "", "address": address}]
    return _addresses_parsed(values)


def _addresses_parsed(values: list[str]) -> list[dict[str, str]]:
    try:
        pairs = email.utils.getaddresses(values)
    except Exception:
        return []
    return [{"name": name, "address": address} for name, address in pairs if address or name]


def _payload_bytes(part: Message) -> bytes:
    """A leaf part's body, decoded from its transfer encoding (leniently)."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        raw = part.get_payload()
        if isinstance(raw, str):
            return raw.encode("utf-8", "surrogateescape")
        return b""
    return payload


def _param(part: Message, name: str, header: str = "content-type") -> str | None:
    try:
        value = part.get_param(name, header=header)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):  # RFC 2231: (charset, language, value)
        try:
            return email.utils.collapse_rfc2231_value(value)
        except Exception:
            return _fix_8bit(str(value[2]))
    return decode_header(value)


_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+"
#: ``type/subtype`` with at most a plain ``charset``: most leaf parts.
_PLAIN_CONTENT_TYPE = re.compile(rf"[ \t]*({_TOKEN}/{_TOKEN})[ \t]*(?:;[ \t]*charset=(\"?)({_TOKEN})\2[ \t]*)?",
                                 re.IGNORECASE)


def content_fields(part: Message) -> tuple[str, str | None, str | None, str | None]:
    """A part's content type, disposition, filename and charset."""
    value = part.get("content-type")
    if isinstance(value, str) and part.get("content-disposition") is None:
        # The stdlib's parameter parsing is a fifth of the parse; a plain Content-Type
        # and no Content-Disposition read the same (compared in tests/email/test_protocol.py).
        plain = _PLAIN_CONTENT_TYPE.fullmatch(value)
        if plain is not None:
            charset = plain.group(3)
            return plain.group(1).lower(), None, None, charset.lower() if charset else None
    return content_fields_parsed(part)


def content_fields_parsed(part: Message) -> tuple[str, str | None, str | None, str | None]:
    """:func:`content_fields` by the stdlib's full parse of the headers."""
    return (part.get_content_type(),
            (part.get_content_disposition() or "").lower() or None,
            _param(part, "filename", "content-disposition") or _param(part, "name"),
            part.get_content_charset())


class _Walker:
    """Builds the part tree, the text/html conveniences and the attachments."""

    def __init__(self) -> None:
        self.text: str | None = None
        self.html: str | None = None
        self.attachments: list[dict[str, Any]] = []

    def part(self, part: Message, depth: int, headers: list[list[str]] | None = None) -> dict[str, Any]:
        content_type, disposition, filename, charset = content_fields(part)
        node: dict[str, Any] = {
            "content_type": content_type,
            "charset": charset,
            "disposition": disposition,
            "filename": filename,
            "headers": [[k, decode_header(v)] for k, v in part.raw_items()] if headers is None else headers,
            "body": None,
            "attachment": None,
            "parts": [],
        }
        if part.is_multipart():
            if depth < MAX_DEPTH:
                children = part.get_payload()
                node["parts"] = [self.part(c, depth + 1) for c in children if isinstance(c, Message)]
            return node
        body = _payload_bytes(part)
        # Text bodies are the message; anything named, non-text or marked
        # "attachment" is an attachment (a text/plain with a filename included).
        is_attachment = disposition == "attachment" or bool(filename) or content_type not in (
            "text/plain", "text/html")
        if is_attachment:
            node["attachment"] = len(self.attachments)
            self.attachments.append({
                "filename": filename,
                "content_type": content_type,
                "content_id": decode_header(part["content-id"]) if part["content-id"] else None,
                "disposition": disposition,
                "size": len(body),
                "content": body,
            })
            return node
        node["body"] = body
        if content_type == "text/plain" and self.text is None:
            self.text = _decode_bytes(body, charset).replace("\r\n", "\n")
        elif content_type == "text/html" and self.html is None:
            self.html = _decode_bytes(body, charset).replace("\r\n", "\n")
        return node


def parse_message(raw: bytes) -> dict[str, Any]:
    """The parsed fields of an ``email.receive`` from the raw message bytes.

    Args:
        raw: an RFC 5322 message, CRLF or LF line endings.

    Returns the keys ``message_id``, ``subject``, ``from``, ``to``, ``cc``,
    ``reply_to``, ``date``, ``in_reply_to``, ``references``, ``headers``,
    ``text``, ``html``, ``attachments``, ``parts`` and ``defects``.
    """
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    # raw_items(): compat32 turns 8-bit values into Header objects that lose
    # the bytes; the raw strings keep them (surrogate-escaped) for _fix_8bit.
    headers = [[name, decode_header(value)] for name, value in msg.raw_items()]
    by_name: dict[str, list[str]] = {}
    for key, value in headers:
        by_name.setdefault(key.lower(), []).append(value)

    def all_of(name: str) -> list[str]:
        return by_name.get(name, [])

    def first(name: str) -> str | None:
        found = all_of(name)
        return found[0].strip() if found else None

    walker = _Walker()
    tree = walker.part(msg, 0, [pair[:] for pair in headers])
    defects = sorted({type(d).__name__ for p in msg.walk() for d in getattr(p, "defects", [])})
    references = " ".join(all_of("references")).split()
    return {
        "message_id": first("message-id"),
        "subject": first("subject") or "",
        "from": _addresses(all_of("from")),
        "to": _addresses(all_of("to")),
        "cc": _addresses(all_of("cc")),
        "reply_to": _addresses(all_of("reply-to")),
        "date": first("date"),
        "in_reply_to": first("in-reply-to"),
        "references": references,
        "headers": headers,
        "text": walker.text,
        "html": walker.html,
        "attachments": walker.attachments,
        "parts": tree,
        "defects": defects,
    }


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


@dataclass
class Envelope:
    """The SMTP transaction around a message.

    Args:
        mail_from: the reverse path, ``""`` for the null sender ``<>``.
        rcpt_to: every accepted recipient.
        peer: the client's address, ``host:port``.
        helo: the name the client greeted with.
        tls: whether the session used TLS.
        auth: the user the client authenticated as.
        received_at: UNIX time of the 250.
    """

    mail_from: str
    rcpt_to: list[str]
    peer: str = ""
    helo: str | None = None
    tls: bool = False
    auth: str | None = None
    received_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """The ``envelope`` key of ``email.receive``."""
        return {"mail_from": self.mail_from, "rcpt_to": list(self.rcpt_to), "peer": self.peer,
                "helo": self.helo, "tls": self.tls, "auth": self.auth, "received_at": self.received_at}


def receive_message(raw: bytes, envelope: Envelope, *, id: str, reply_channel: str,
                    delivery: Delivery, attempt: int = 1, parsed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``email.receive`` for one delivery of a message.

    Args:
        raw: the message as received (after dot-unstuffing).
        envelope: the SMTP transaction.
        id: unique per delivery, the same on every hand-off of it.
        reply_channel: where ``email.ack`` and ``email.send`` go.
        delivery: the channel and the recipients that routed to it.
        attempt: 1 on the first hand-off, more on redeliveries.
        parsed: :func:`parse_message` of ``raw``, when already at hand.
    """
    return {
        "type": "email.receive",
        "id": id,
        "reply_channel": reply_channel,
        "attempt": attempt,
        "channel": delivery.channel,
        "recipients": list(delivery.recipients),
        "route_kwargs": dict(delivery.kwargs),
        "envelope": envelope.as_dict(),
        **(parse_message(raw) if parsed is None else parsed),
        "raw": raw,
    }


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


def _single_line(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise OutboundError(f"{name}: header values may not contain line breaks")
    return value


def _address_list(message: dict[str, Any], key: str) -> list[str]:
    value = message.get(key) or []
    return [value] if isinstance(value, str) else list(value)


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


def build_outbound(message: dict[str, Any]) -> Outbound:
    """The relay's envelope and bytes for a valid ``email.send``.

    Raises :class:`OutboundError` when the message cannot be built (an
    address without ``@``, a header with a line break, no recipient).
    """
    sender_header = _single_line("from", message["from"])
    sender = message.get("envelope_from")
    sender = _addr_spec(sender_header) if sender is None else sender
    to, cc, bcc = (_address_list(message, k) for k in ("to", "cc", "bcc"))
    recipients = [_addr_spec(a) for a in to + cc + bcc]
    if not recipients:
        raise OutboundError("no recipient in to, cc or bcc")
    if message.get("raw") is not None:
        raw = message["raw"]
        parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
        data = re.sub(rb"\r?\n", b"\r\n", raw)
        # The message says who wrote it in its own headers, not in "from": those count.
        return Outbound(sender, recipients, data, parsed.get("message-id"), header_authors(raw))
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender_header
    if to:
        msg["To"] = ", ".join(_single_line("to", a) for a in to)
    if cc:
        msg["Cc"] = ", ".join(_single_line("cc", a) for a in cc)
    msg["Subject"] = _single_line("subject", message.get("subject") or "")
    msg["Date"] = email.utils.formatdate(localtime=False)
    message_id = message.get("message_id") or email.utils.make_msgid(domain=address_domain(sender) or None)
    msg["Message-ID"] = _single_line("message_id", message_id)
    if message.get("in_reply_to"):
        msg["In-Reply-To"] = _single_line("in_reply_to", message["in_reply_to"])
    references = message.get("references") or []
    if isinstance(references, str):
        references = references.split()
    if references:
        msg["References"] = " ".join(_single_line("references", r) for r in references)
    for name, value in message.get("headers") or []:
        if not re.fullmatch(r"[!-9;-~]+", name):
            raise OutboundError(f"{name!r} is not a header name")
        try:
            msg[name] = _single_line(name, value)
        except ValueError as exc:  # a second From, say: the policy allows one
            raise OutboundError(f"headers: {exc}") from None
    text, html = message.get("text"), message.get("html")
    if text is not None or html is None:
        msg.set_content(text or "")
        if html is not None:
            msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(html, subtype="html")
    for attachment in message.get("attachments") or []:
        maintype, _, subtype = (attachment.get("content_type") or "application/octet-stream").partition("/")
        msg.add_attachment(attachment["content"], maintype=maintype, subtype=subtype or "octet-stream",
                           filename=attachment.get("filename"))
    try:
        data = msg.as_bytes(policy=email.policy.SMTP)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise OutboundError(f"cannot serialise the message: {exc}") from exc
    # Extra headers may name authors too (a Sender, say): judge what goes out.
    return Outbound(sender, recipients, data, message_id, header_authors(data))


def sent_message(send: dict[str, Any], outbound: Outbound, response: str, attempts: int) -> dict[str, Any]:
    """The ``email.sent`` reporting a delivered ``email.send``."""
    return {"type": "email.sent", "id": send.get("id"), "message_id": outbound.message_id,
            "recipients": outbound.recipients, "response": response, "attempts": attempts}


def failed_message(send: dict[str, Any], error: str, *, code: int | None = None, permanent: bool = True,
                   attempts: int = 0, recipients: list[str] | None = None) -> dict[str, Any]:
    """The ``email.failed`` reporting an ``email.send`` that was not delivered."""
    return {"type": "email.failed", "id": send.get("id") if isinstance(send, dict) else None,
            "error": error, "code": code, "permanent": permanent, "attempts": attempts,
            "recipients": recipients or []}
