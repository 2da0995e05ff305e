"""Test an ``email.*`` consumer: deliver mail, read its ``email.send`` and acks.

::

    async with EmailCommunicator(SupportConsumer, "email.support") as mail:
        received = await mail.deliver(from_="you@example.test", to="support@example.com",
                                      subject="help", body="it broke")
        reply = await mail.receive_email()               # an email.send
        assert reply["subject"] == "Re: help"
        assert await mail.acked(received)

:func:`email_receive` builds the ``email.receive`` a gateway would hand to
the consumer, from a short description or from raw RFC 5322 bytes, with the
gateway's own builder (:mod:`protocol_specs.email`): what a test sees is what
the gateway hands over.
"""

from __future__ import annotations

import email.utils
import re
import uuid
from typing import Any, Iterable

from consumers.testing.harness import TIMEOUT, GatewayCommunicator
from protocol_specs.email import (
    Delivery,
    Envelope,
    compose_message,
    failed_message,
    parse_message,
    receive_message,
    send_recipients,
    sent_message,
)

__all__ = ["EmailCommunicator", "email_receive"]

#: Where the test gateway wants acks and sends.
REPLY_CHANNEL = "email.test-gateway"
#: The gateways' outbound channel, where a consumer's replies go.
SEND_CHANNEL = "email.send"
#: The domain of the Message-IDs the kit makes up.
DOMAIN = "example.test"


def _compose(from_: str, to: str | list[str], subject: str, body: str, html: str | None,
             headers: dict[str, str] | None, message_id: str | None) -> bytes:
    """The message a description stands for, composed as the gateway composes an ``email.send``."""
    send: dict[str, Any] = {"type": "email.send", "from": from_, "to": to, "subject": subject, "text": body,
                            "html": html, "headers": [[k, v] for k, v in (headers or {}).items()],
                            "message_id": message_id}
    return compose_message(send, domain=DOMAIN)[0]


def email_receive(raw: bytes | None = None, *, from_: str = "sender@example.test",
                  to: str | list[str] = "user@example.test", subject: str = "test", body: str = "",
                  html: str | None = None, headers: dict[str, str] | None = None, message_id: str | None = None,
                  mail_from: str | None = None, rcpt_to: Iterable[str] | None = None,
                  channel: str = "email.receive", reply_channel: str = REPLY_CHANNEL, id: str | None = None,
                  attempt: int = 1, route_kwargs: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``email.receive`` a gateway hands to consumers for one message.

    Give ``raw`` (RFC 5322 bytes; LF line endings become CRLF as SMTP carries
    them) or describe the message with ``from_``, ``to``, ``subject``,
    ``body`` (and ``html``, ``headers``, ``message_id``).

    Args:
        raw: the message as received.
        from_: the From header (and the envelope sender, unless ``mail_from``).
        to: the To header (and the recipients, unless ``rcpt_to``).
        subject: the Subject.
        body: the plain-text body.
        html: an HTML alternative.
        headers: more headers.
        message_id: the Message-ID (a fresh one by default).
        mail_from: the SMTP envelope sender (``''`` for the null sender ``<>``).
        rcpt_to: the SMTP recipients routed to the consumer.
        channel: the channel the gateway routed it to.
        reply_channel: where acks and ``email.send`` go.
        id: the delivery id, the same on a redelivery (random by default).
        attempt: 1, or more for a redelivery.
        route_kwargs: named groups a gateway-side route captured.
    """
    if raw is None:
        raw = _compose(from_, to, subject, body, html, headers, message_id)
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    parsed = parse_message(raw)
    if mail_from is None:
        mail_from = parsed["from"][0]["address"] if parsed["from"] else from_
    if rcpt_to is None:
        rcpt_to = [a["address"] for a in parsed["to"] + parsed["cc"]] or ([to] if isinstance(to, str) else to)
    recipients = list(rcpt_to)
    envelope = Envelope(mail_from, recipients, peer="127.0.0.1:0", helo="test")
    return receive_message(raw, envelope, id=id or uuid.uuid4().hex, reply_channel=reply_channel,
                           delivery=Delivery(channel, recipients, dict(route_kwargs or {})), attempt=attempt,
                           parsed=parsed)


class EmailCommunicator(GatewayCommunicator):
    """An email gateway's side of an :class:`~consumers.email.EmailConsumer`.

    What the consumer sends back to the gateway is sorted as it arrives:
    ``email.send`` messages are read with :meth:`receive_email`, ``email.ack``
    ids are collected in :attr:`acks`.

    Args:
        consumer: the consumer class, or a harness/communicator to share.
        channel: the channel the gateway's route sends to.
        reply_channel: the gateway's reply channel (acks go there).
        send_channel: the gateways' outbound channel (``email.send``), where replies go.
        timeout: upper bound, in seconds, on every wait.
        raise_errors: see :class:`~consumers.testing.ConsumerHarness`.
    """

    default_channel = "email.receive"

    default_send_channel = SEND_CHANNEL

    def __init__(self, consumer: Any, channel: str | None = None, *, reply_channel: str = REPLY_CHANNEL,
                 send_channel: str | None = None, timeout: float = TIMEOUT, raise_errors: bool = True) -> None:
        super().__init__(consumer, channel, send_channel=send_channel, timeout=timeout, raise_errors=raise_errors)
        self.reply_channel = reply_channel
        #: The ids the consumer acknowledged, in order (an ``email.ack`` with ``ids`` adds each).
        self.acks: list[str] = []
        self.harness.add_absorber(self._absorb)

    def _absorb(self, channel: str, message: dict[str, Any]) -> bool:
        if channel == self.reply_channel and message.get("type") == "email.ack":
            self.acks.extend([message["id"], *message.get("ids", [])])
            return True
        return False

    async def deliver(self, raw: bytes | None = None, **description: Any) -> dict[str, Any]:
        """Deliver a message (arguments as in :func:`email_receive`); return the ``email.receive``."""
        description.setdefault("channel", self.harness.channel)
        message = email_receive(raw, reply_channel=self.reply_channel, **description)
        await self.harness.deliver(message)
        return message

    async def redeliver(self, message: dict[str, Any]) -> dict[str, Any]:
        """Hand ``message`` again, as the gateway does when no ack came (same ``id``, next attempt)."""
        again = {**message, "attempt": message["attempt"] + 1}
        await self.harness.deliver(again)
        return again

    async def receive_email(self, timeout: float | None = None) -> dict[str, Any]:
        """The next ``email.send`` the consumer sent to the gateway."""
        message = await self.harness.receive(self.send_channel, timeout=timeout)
        assert message["type"] == "email.send", f"expected email.send, got {message!r}"
        return message

    async def acked(self, message: dict[str, Any] | str, timeout: float | None = None) -> bool:
        """Whether the consumer acknowledged ``message`` (or the id), once it finished handling."""
        await self.harness.wait_for(lambda: not self.harness.busy, "the consumer to finish", timeout)
        self.harness.check()
        delivery_id = message if isinstance(message, str) else message["id"]
        return delivery_id in self.acks

    async def answer(self, send: dict[str, Any], ok: bool = True, error: str = "550 5.1.1 no such user",
                     code: int | None = 550) -> dict[str, Any] | None:
        """Send the ``email.sent`` (or ``email.failed``) the gateway would send for
        ``send`` to its ``reply_channel`` (none when it names none); return it."""
        reply_channel = send.get("reply_channel")
        if not reply_channel:
            return None
        recipients = send_recipients(send)
        if ok:
            result = sent_message(send, message_id=send.get("message_id") or email.utils.make_msgid(domain=DOMAIN),
                                  recipients=recipients, response="250 2.0.0 OK", attempts=1)
        else:
            result = failed_message(send, error, code=code, permanent=True, attempts=1, recipients=recipients)
        await self.layer.send(reply_channel, result)
        return result

