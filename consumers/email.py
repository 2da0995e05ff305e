"""The Django side of the email gateway: consumers, routing, replies (tested with consumers.testing).

A consumer subclasses :class:`EmailConsumer` and either lists ``routes``
(by recipient address or domain and by subject, named groups passed on) or
overrides ``email_receive``::

    class SupportConsumer(EmailConsumer):
        routes = [
            route("ticket", address=r"support\\+(?P<ticket>\\d+)@example\\.com"),
            route("new_ticket", subject=r"(?i)^help"),
        ]

        async def ticket(self, context):
            await context.reply(text=f"Noted on ticket {context.kwargs['ticket']}.")

Each handler gets an :class:`EmailContext`: the parsed :class:`Mail`, the
route's captured groups, and ``reply()``/``send()``. After the handler
returns, the base class sends ``email.ack`` so the gateway forgets the
message; a handler that raises sends nothing, and the gateway hands the
message again later (same ``id``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from consumers.base import GatewayConsumer, MessageContext
from consumers.send import DEFAULT_CHANNELS, DEFAULT_TIMEOUT

logger = logging.getLogger("consumers.email")

#: How many acknowledged ids a consumer class remembers to skip redeliveries.
RECENT_IDS = 10_000


# --------------------------------------------------------------------------
# The parsed message.


class Mail:
    """Read access to an ``email.receive`` message.

    Args:
        message: the ``email.receive`` dict.
    """

    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message

    id = property(lambda self: self.message["id"], doc="unique per delivery, the same when redelivered")
    subject = property(lambda self: self.message["subject"], doc="decoded Subject ('' when absent)")
    text = property(lambda self: self.message["text"], doc="the first text/plain body, or None")
    html = property(lambda self: self.message["html"], doc="the first text/html body, or None")
    raw = property(lambda self: self.message["raw"], doc="the message bytes as received")
    message_id = property(lambda self: self.message["message_id"], doc="the Message-ID header")
    attachments = property(lambda self: self.message["attachments"], doc="attachment dicts")
    recipients = property(lambda self: self.message["recipients"], doc="the recipients routed here")
    references = property(lambda self: self.message["references"], doc="the References message ids")

    @property
    def envelope_from(self) -> str:
        """The SMTP reverse path; ``''`` for the null sender ``<>`` (a bounce)."""
        return self.message["envelope"]["mail_from"]

    @property
    def from_address(self) -> str | None:
        """The first address of the From header."""
        found = self.message["from"]
        return found[0]["address"] if found else None

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first decoded value of header ``name`` (case-insensitive)."""
        for key, value in self.message["headers"]:
            if key.lower() == name.lower():
                return value
        return default

    def headers(self, name: str) -> list[str]:
        """Every decoded value of header ``name``."""
        return [v for k, v in self.message["headers"] if k.lower() == name.lower()]

    def auto_reply_allowed(self) -> bool:
        """Whether RFC 3834 allows an automatic answer to this message.

        No answer to the null sender (bounces), to mail marked
        ``Auto-Submitted`` (anything but ``no``), to bulk, list or junk mail
        (``Precedence``, ``List-Id``, ``List-Unsubscribe``), to mail asking
        for none (``X-Auto-Response-Suppress``), or to system senders.
        """
        sender = self.envelope_from.lower()
        if not sender or "@" not in sender:
            return False
        local = sender.partition("@")[0]
        if local in ("mailer-daemon", "postmaster") or local.startswith("owner-") or local.endswith("-request"):
            return False
        auto = (self.header("auto-submitted") or "no").strip().lower()
        if not auto.startswith("no"):
            return False
        precedence = (self.header("precedence") or "").strip().lower()
        if precedence in ("bulk", "list", "junk"):
            return False
        if self.header("list-id") is not None or self.header("list-unsubscribe") is not None:
            return False
        suppress = (self.header("x-auto-response-suppress") or "").lower()
        if "all" in suppress or "autoreply" in suppress:
            return False
        return sender not in {r.lower() for r in self.message["envelope"]["rcpt_to"]}


def reply_subject(subject: str) -> str:
    """``Re: <subject>``, without stacking ``Re: Re:``."""
    return subject if re.match(r"(?i)re:", subject.strip()) else f"Re: {subject}"


def build_reply(mail: Mail, *, text: str | None = None, html: str | None = None, subject: str | None = None,
                sender: str | None = None, to: str | None = None, auto: bool = False,
                attachments: list[dict[str, Any]] | None = None,
                headers: list[list[str]] | None = None) -> dict[str, Any]:
    """An ``email.send`` answering ``mail``, threaded with In-Reply-To and References.

    Args:
        mail: the message answered.
        text: the plain-text body.
        html: an HTML alternative.
        subject: default ``Re: <subject>``.
        sender: the From; default the recipient the message was routed for.
        to: default the envelope sender (where bounces and answers belong).
        auto: an automatic answer: adds ``Auto-Submitted: auto-replied``.
        attachments: ``{"filename", "content_type", "content"}`` dicts.
        headers: extra ``[name, value]`` pairs.
    """
    target = to or mail.envelope_from or mail.from_address
    if not target:
        raise ValueError("the message has no sender to answer (null sender and no From)")
    references = list(mail.references)
    if mail.message_id and mail.message_id not in references:
        references.append(mail.message_id)
    extra = [list(h) for h in headers or []]
    if auto:
        extra.append(["Auto-Submitted", "auto-replied"])
    message: dict[str, Any] = {
        "type": "email.send",
        "id": uuid.uuid4().hex,
        "from": sender or mail.recipients[0],
        "to": [target],
        "subject": reply_subject(mail.subject) if subject is None else subject,
        "text": text,
        "headers": extra,
        "in_reply_to": mail.message_id,
        "references": references,
    }
    if html is not None:
        message["html"] = html
    if attachments:
        message["attachments"] = attachments
    return message


# --------------------------------------------------------------------------
# Routing.


@dataclass
class MailRoute:
    """Messages whose recipient and subject match go to the method ``handler``.

    Args:
        handler: the consumer method's name (or a callable taking the context).
        address: fullmatched against each routed recipient (lower case).
        domain: fullmatched against each recipient's domain (lower case).
        subject: searched for in the subject.
    """

    handler: str | Callable[..., Any]
    address: re.Pattern[str] | None = None
    domain: re.Pattern[str] | None = None
    subject: re.Pattern[str] | None = None

    def match(self, mail: Mail) -> dict[str, str] | None:
        """The named groups when ``mail`` matches, else ``None``."""
        subject_groups: dict[str, str] = {}
        if self.subject is not None:
            found = self.subject.search(mail.subject)
            if found is None:
                return None
            subject_groups = {k: v for k, v in found.groupdict().items() if v is not None}
        if self.address is None and self.domain is None:
            return subject_groups
        for recipient in mail.recipients:
            recipient = recipient.lower()
            groups: dict[str, str] | None = {}
            for pattern, value in ((self.address, recipient), (self.domain, recipient.rpartition("@")[2])):
                if pattern is None:
                    continue
                found = pattern.fullmatch(value)
                if found is None:
                    groups = None
                    break
                groups.update({k: v for k, v in found.groupdict().items() if v is not None})
            if groups is not None:
                return {**groups, **subject_groups}
        return None


def route(handler: str | Callable[..., Any], *, address: str | None = None, domain: str | None = None,
          subject: str | None = None) -> MailRoute:
    """A :class:`MailRoute` from pattern strings."""
    return MailRoute(handler, *(re.compile(p) if p else None for p in (address, domain, subject)))


# --------------------------------------------------------------------------
# The consumer.


class EmailContext(MessageContext):
    """One ``email.receive`` and the means to answer it.

    Args:
        consumer: the consumer instance.
        message: the message.
    """

    def __init__(self, consumer: GatewayConsumer, message: dict[str, Any]) -> None:
        super().__init__(consumer, message)
        self.mail = Mail(message) if message.get("type") == "email.receive" else None
        self.kwargs: dict[str, str] = dict(message.get("route_kwargs") or {})

    async def send(self, message: dict[str, Any], *, wait: bool = False,
                   timeout: float = DEFAULT_TIMEOUT) -> str | dict[str, Any] | None:
        """Send an ``email.send`` on the gateways' outbound channel (the
        consumer's ``send_channel``, ``email.send`` by default).

        Not on this message's ``reply_channel``: that channel belongs to the
        gateway process that delivered the message and dies with it, while
        any instance relays what arrives on the outbound channel.

        Returns its ``id`` (None if it has none); with ``wait``, the ``email.sent`` or ``email.failed``
        the gateway answers (``TimeoutError`` after ``timeout`` seconds; relay
        retries can take longer than a handler should wait).
        """
        channel = getattr(self.consumer, "send_channel", DEFAULT_CHANNELS["email"])
        return await self.request(channel, message, wait=wait, timeout=timeout)

    async def reply(self, *, wait: bool = False, timeout: float = DEFAULT_TIMEOUT,
                    **kwargs: Any) -> dict[str, Any]:
        """Answer the message (see :func:`build_reply` for the arguments).

        Returns the ``email.send`` it sent; with ``wait``, the gateway's
        ``email.sent`` or ``email.failed`` for it instead (see :meth:`send`).
        """
        assert self.mail is not None, "reply() answers an email.receive"
        message = build_reply(self.mail, **kwargs)
        result = await self.send(message, wait=wait, timeout=timeout)
        return result if wait else message  # type: ignore[return-value]

    async def ack(self) -> None:
        """Tell the gateway this message is handled (the base class does it after the handler).

        Acks made in the same event-loop iteration for the same gateway go as one
        ``email.ack`` (``ids``); this returns once that one was sent, and raises if
        it could not be.
        """
        if self.reply_channel and self.message.get("id"):
            await _acks.send(self.channel_layer, self.reply_channel, self.message["id"])


class _AckBatcher:
    """Gathers the acks of one event-loop iteration into one ``email.ack`` per reply channel.

    Under ``gateway worker`` (or ``runworker``) many messages finish together;
    one layer message for all of them spares the layer, Redis and the gateway
    a message each.
    """

    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, dict[tuple[int, str], list[_AckBatch]]] = {}
        self._sending: set[asyncio.Task] = set()

    async def send(self, layer: Any, reply_channel: str, delivery_id: str) -> None:
        """Acknowledge ``delivery_id`` to ``reply_channel`` through ``layer``."""
        loop = asyncio.get_running_loop()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = {}
            loop.call_soon(self._flush, loop)
        batches = pending.setdefault((id(layer), reply_channel), [])
        if not batches or len(batches[-1].ids) > MAX_ACK_IDS:
            batches.append(_AckBatch(layer, reply_channel, loop.create_future()))
        batch = batches[-1]
        batch.ids.append(delivery_id)
        await asyncio.shield(batch.sent)  # a cancelled handler must not cancel the others' ack

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        for batches in self._pending.pop(loop, {}).values():
            for batch in batches:
                task = loop.create_task(batch.send())
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)


@dataclass
class _AckBatch:
    layer: Any
    reply_channel: str
    sent: asyncio.Future
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sent.add_done_callback(_retrieve)

    async def send(self) -> None:
        message: dict[str, Any] = {"type": "email.ack", "id": self.ids[0]}
        if len(self.ids) > 1:
            message["ids"] = self.ids[1:]
        try:
            await self.layer.send(self.reply_channel, message)
        except Exception as exc:  # every handler in the batch hears it (and logs it)
            self.sent.set_exception(exc)
            return
        self.sent.set_result(None)


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # awaited by shield()s that may all be gone: not "never retrieved"


#: ``ids`` in one ``email.ack`` at most (protocol_specs/email.md).
MAX_ACK_IDS = 1000
_acks = _AckBatcher()


class EmailConsumer(GatewayConsumer):
    """Base consumer of ``email.receive``: routes, acknowledgements, duplicates.

    ``routes`` lists :func:`route` entries tried in order; the first match's
    handler runs with ``context.kwargs`` holding its named groups, and a
    message no route matches goes to :meth:`unrouted`. A message whose ``id``
    this class already acknowledged (a redelivery after a lost ack) is
    acknowledged again without running the handler.
    """

    context_class = EmailContext
    routes: list[MailRoute] = []
    #: The gateways' outbound channel (``email.send_channel`` of their config).
    send_channel: ClassVar[str] = DEFAULT_CHANNELS["email"]
    recent_ids: collections.OrderedDict = collections.OrderedDict()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.recent_ids = collections.OrderedDict()

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") == "email.receive" and message.get("id") in self.recent_ids:
            self.stats["duplicates"] += 1
            await self._ack(self.context_class(self, message))
            return
        await super().dispatch(message)

    async def email_receive(self, context: EmailContext) -> None:
        """Run the first matching route's handler (or :meth:`unrouted`)."""
        assert context.mail is not None
        for entry in self.routes:
            groups = entry.match(context.mail)
            if groups is None:
                continue
            context.kwargs = {**context.kwargs, **groups}
            handler = getattr(self, entry.handler) if isinstance(entry.handler, str) else entry.handler
            result = handler(context)
            if asyncio.iscoroutine(result):
                await result
            return
        await self.unrouted(context)

    async def unrouted(self, context: EmailContext) -> None:
        """A message no route matched: logged, and acknowledged (nothing will change on redelivery)."""
        assert context.mail is not None
        logger.warning("%s: no route for mail to %s (subject %r)", type(self).__name__,
                       ", ".join(context.mail.recipients), context.mail.subject)

    async def handler_done(self, context: MessageContext) -> None:
        if context.type != "email.receive":
            return
        await self._ack(context)
        recent = type(self).recent_ids
        recent[context.message.get("id")] = True
        while len(recent) > RECENT_IDS:
            recent.popitem(last=False)

    async def _ack(self, context: MessageContext) -> None:
        try:
            await context.ack()  # type: ignore[attr-defined]
        except Exception:  # the layer is down: the gateway hands the message again
            self.stats["ack_failed"] += 1
            logger.exception("%s: could not acknowledge %s", type(self).__name__, context.message.get("id"))

