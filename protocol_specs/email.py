"""Build and read the ``email.*`` messages of ``email.md``: pure, stdlib only.

The one implementation of what both sides of the email gateway need of a
message, kept next to the spec so that consumers never import a gateway:

- **email.receive**: :func:`parse_message` reads raw RFC 5322 bytes into the
  parsed keys, and :func:`receive_message` adds the SMTP :class:`Envelope`
  and the :class:`Delivery` (channel, recipients, route groups). The gateway
  hands what they build to consumers; ``consumers.testing`` builds its
  deliveries with the same functions.
- **email.send**: :func:`compose_message` turns one (without ``raw``) into the
  MIME message the relay gets; :func:`send_recipients` lists its envelope
  recipients.
- **email.sent / email.failed**: :func:`sent_message` and :func:`failed_message`.
- **gateway worker**: :func:`consumer_channels` (which channels Django
  workers consume), :func:`conversation_key` (the unit of ordering) and
  :func:`settled` (the ack of a message it dead-lettered).

Nothing here does I/O, not even a host-name lookup: the domain of a generated
Message-ID is an argument. Parsing never raises on hostile input: the
``compat32`` parser is lenient, every decode has a fallback, and the raw bytes
always travel with the message, so a consumer can redo what this module could not.
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
from typing import Any

__all__ = [
    "MAX_DEPTH", "MAX_HEADER_VALUE", "Delivery", "Envelope", "OutboundError", "address_domain",
    "address_list", "compose_message", "consumer_channels", "content_fields", "content_fields_parsed",
    "conversation_key", "decode_header", "settled",
    "failed_message", "parse_message", "receive_message", "send_recipients", "sent_message", "single_line",
]

#: Header values longer than this are cut in ``headers`` (the raw keeps them).
MAX_HEADER_VALUE = 16 * 1024
#: MIME nesting deeper than this is not walked further (the raw keeps it).
MAX_DEPTH = 32

_UNFOLD = re.compile(r"\r?\n(?=[ \t])")


def address_domain(address: str) -> str:
    """The lower-case domain of ``user@domain`` (empty when there is none)."""
    return address.rpartition("@")[2].strip().lower().rstrip(".")


# --------------------------------------------------------------------------
# email.receive: MIME into plain data.


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
# email.send: the MIME message it describes.


class OutboundError(ValueError):
    """An ``email.send`` that cannot be turned into a message; ``str()`` says why."""


#: A header name: printable ASCII but the colon (RFC 5322 field-name).
_HEADER_NAME = re.compile(r"[!-9;-~]+")


def single_line(name: str, value: str) -> str:
    """``value`` unchanged; :class:`OutboundError` if it holds a line break (header injection)."""
    if "\r" in value or "\n" in value:
        raise OutboundError(f"{name}: header values may not contain line breaks")
    return value


def address_list(message: dict[str, Any], key: str) -> list[str]:
    """The addresses of ``to``, ``cc`` or ``bcc`` (one string or a list) as a list."""
    value = message.get(key) or []
    return [value] if isinstance(value, str) else list(value)


def send_recipients(message: dict[str, Any]) -> list[str]:
    """Every recipient an ``email.send`` names: ``to``, then ``cc``, then ``bcc``, as written."""
    return [address for key in ("to", "cc", "bcc") for address in address_list(message, key)]


def compose_message(send: dict[str, Any], *, domain: str) -> tuple[bytes, str]:
    """The message an ``email.send`` without ``raw`` describes, and its Message-ID.

    Args:
        send: a valid ``email.send``.
        domain: the right-hand side of a generated Message-ID (when the
            message names none). An argument so that building never looks
            up the host's name (``socket.getfqdn()`` blocks on DNS).

    Returns the message (CRLF line endings, no Bcc header) and its Message-ID.

    Raises:
        OutboundError: a header value with a line break, a bad header name,
            a header the message may hold once given twice, or a message
            that cannot be serialised.
    """
    msg = EmailMessage(policy=email.policy.SMTP)
    message_id = send.get("message_id") or email.utils.make_msgid(domain=domain)
    _set_headers(msg, send, message_id)
    _set_extra_headers(msg, send.get("headers") or [])
    _set_body(msg, send.get("text"), send.get("html"))
    _add_attachments(msg, send.get("attachments") or [])
    try:
        return msg.as_bytes(policy=email.policy.SMTP), message_id
    except (ValueError, TypeError, UnicodeError) as exc:
        raise OutboundError(f"cannot serialise the message: {exc}") from exc


def _set_headers(msg: EmailMessage, send: dict[str, Any], message_id: str) -> None:
    """From, To, Cc, Subject, Date, Message-ID and the threading headers, in that order."""
    msg["From"] = single_line("from", send["from"])
    for key, name in (("to", "To"), ("cc", "Cc")):  # never Bcc: it would tell every reader
        addresses = address_list(send, key)
        if addresses:
            msg[name] = ", ".join(single_line(key, a) for a in addresses)
    msg["Subject"] = single_line("subject", send.get("subject") or "")
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = single_line("message_id", message_id)
    if send.get("in_reply_to"):
        msg["In-Reply-To"] = single_line("in_reply_to", send["in_reply_to"])
    references = send.get("references") or []
    if isinstance(references, str):
        references = references.split()
    if references:
        msg["References"] = " ".join(single_line("references", r) for r in references)


def _set_extra_headers(msg: EmailMessage, headers: list[list[str]]) -> None:
    for name, value in headers:
        if not _HEADER_NAME.fullmatch(name):
            raise OutboundError(f"{name!r} is not a header name")
        try:
            msg[name] = single_line(name, value)
        except ValueError as exc:  # a second From, say: the policy allows one
            raise OutboundError(f"headers: {exc}") from None


def _set_body(msg: EmailMessage, text: str | None, html: str | None) -> None:
    """Text (empty when neither is given), text with an HTML alternative, or HTML alone."""
    if text is None and html is not None:
        msg.set_content(html, subtype="html")
        return
    msg.set_content(text or "")
    if html is not None:
        msg.add_alternative(html, subtype="html")


def _add_attachments(msg: EmailMessage, attachments: list[dict[str, Any]]) -> None:
    for attachment in attachments:
        maintype, _, subtype = (attachment.get("content_type") or "application/octet-stream").partition("/")
        msg.add_attachment(attachment["content"], maintype=maintype, subtype=subtype or "octet-stream",
                           filename=attachment.get("filename"))


# --------------------------------------------------------------------------
# email.sent and email.failed: what became of an email.send.


def sent_message(send: dict[str, Any], *, message_id: str | None, recipients: list[str], response: str,
                 attempts: int, refused: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``email.sent`` reporting a delivered ``email.send``.

    Args:
        send: the ``email.send`` (its ``id`` is repeated).
        message_id: the Message-ID of what went out.
        recipients: the envelope recipients.
        response: the relay's final answer.
        attempts: delivery attempts made.
        refused: recipients the relay refused while accepting the others.
    """
    return {"type": "email.sent", "id": send.get("id"), "message_id": message_id, "recipients": recipients,
            "response": response, "attempts": attempts, "refused": dict(refused or {})}


def failed_message(send: dict[str, Any], error: str, *, code: int | None = None, permanent: bool = True,
                   attempts: int = 0, recipients: list[str] | None = None) -> dict[str, Any]:
    """The ``email.failed`` reporting an ``email.send`` that was not delivered.

    Args:
        send: the ``email.send`` (its ``id`` is repeated; anything else gives ``id`` None).
        error: why, for people.
        code: the SMTP reply code, when a server gave one.
        permanent: whether sending it again would fail the same way.
        attempts: delivery attempts made (0 when refused before any).
        recipients: the envelope recipients.
    """
    return {"type": "email.failed", "id": send.get("id") if isinstance(send, dict) else None,
            "error": error, "code": code, "permanent": permanent, "attempts": attempts,
            "recipients": recipients or []}


# --------------------------------------------------------------------------
# What `gateway worker` needs: the channels to consume and the conversations.


def consumer_channels(section: Any) -> list[str]:
    """The route channels and the default channel, each once.

    Args:
        section: the ``email:`` section (``routes`` with a ``channel`` each,
            and ``default_channel``).
    """
    channels = [r.channel for r in section.routes] + [section.default_channel]
    return list(dict.fromkeys(channels))


def settled(message: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """What ``gateway worker`` sends once it dead-lettered an ``email.receive``
    (email.md, ``email.ack``): the ack, so the gateway stops handing it again.
    ``(channel, message)``, or None for a message that takes no ack."""
    if message.get("type") != "email.receive" or not message.get("reply_channel") or not message.get("id"):
        return None
    return message["reply_channel"], {"type": "email.ack", "id": message["id"]}


def conversation_key(message: dict[str, Any]) -> None:
    """None: each message is its own conversation (email.md), so ``gateway
    worker`` handles them concurrently. Every email.receive carries the same
    reply_channel, which as a key would serialise all mail."""
    return None
