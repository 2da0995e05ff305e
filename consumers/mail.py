"""A Django email backend that sends through the email gateway.

::

    EMAIL_BACKEND = "consumers.mail.GatewayEmailBackend"

Then ``send_mail()``, ``EmailMessage.send()``, ``EmailMultiAlternatives``,
``mail_admins()`` and the rest hand each message to the email gateway as
an ``email.send`` on its outbound channel (``email.send_channel`` of the
YAML the ``GATEWAY_CONFIG`` setting names; ``email.send`` by default); the
gateway relays it with retries, as it relays consumers' replies.

The message is the one Django's SMTP backend would send: ``raw`` holds
``message.message()`` as bytes (headers, cc, reply-to, extra headers,
alternatives, attachments, exactly as Django builds them), and the envelope
is ``envelope_from`` (the From address) and the recipients in ``to``,
``cc`` and ``bcc`` (Bcc is never written into the message). The From must
be one of the gateway's allowed senders (``email.senders``, by default any
address of ``email.domains``).

By default a message counts as sent once the channel layer took it: the
gateway delivers it later, and a delivery failure is only logged by the
gateway. With ``GATEWAY_EMAIL_WAIT = True`` (or ``get_connection(wait=True)``)
the backend waits for the gateway's ``email.sent`` or ``email.failed``, up
to ``GATEWAY_EMAIL_TIMEOUT`` seconds (default 30) for all the messages of
one call, counts only delivered ones and raises :class:`GatewayEmailError`
for the others (unless ``fail_silently``).

Like every Django backend it is synchronous: from async code call it through
``sync_to_async`` (or use :func:`consumers.send.async_email_send`).
"""

from __future__ import annotations

import asyncio
from email.utils import parseaddr
from typing import Any, Sequence

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import sanitize_address

from consumers.send import request, send_channel
from gateways.core.specs import load_schema
from protocol_specs.email import send_recipients


class GatewayEmailError(Exception):
    """The gateway could not deliver a message (its ``email.failed``).

    Args:
        result: the ``email.failed`` message (``error``, ``code``, ``permanent``).
    """

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        super().__init__(result.get("error") or "not delivered")


def email_send_message(message: EmailMessage) -> dict[str, Any]:
    """The ``email.send`` for a Django ``EmailMessage``, checked against the schema.

    Raises:
        ValueError: an address Django cannot sanitise, or a message with no recipient.
        gateways.core.specs.InvalidMessage: a message the schema refuses.
    """
    encoding = message.encoding or settings.DEFAULT_CHARSET
    header_from = str(message.extra_headers.get("From", message.from_email))
    envelope_from = parseaddr(sanitize_address(message.from_email, encoding))[1]

    def addresses(values: Sequence[str]) -> list[str]:
        return [sanitize_address(value, encoding) for value in values if value]

    send = {
        "type": "email.send",
        "from": header_from,
        "envelope_from": envelope_from,
        "to": addresses(message.to),
        "cc": addresses(message.cc),
        "bcc": addresses(message.bcc),
        # What Django's SMTP backend hands to sendmail(): the gateway sends it as is.
        "raw": message.message().as_bytes(linesep="\r\n"),
    }
    if not send_recipients(send):  # the rule the gateway applies, checked before anything is sent
        raise ValueError("the message has no recipient in to, cc or bcc")
    load_schema("email").validate(send)
    return send


class GatewayEmailBackend(BaseEmailBackend):
    """Sends Django's email through the email gateway (see the module docstring).

    Args:
        fail_silently: swallow errors instead of raising them.
        wait: wait for each message's delivery result (default
            ``settings.GATEWAY_EMAIL_WAIT``, False).
        timeout: seconds to wait for the results of one call (default
            ``settings.GATEWAY_EMAIL_TIMEOUT``, 30).
    """

    def __init__(self, fail_silently: bool = False, *, wait: bool | None = None, timeout: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.wait = bool(getattr(settings, "GATEWAY_EMAIL_WAIT", False)) if wait is None else wait
        self.timeout = float(getattr(settings, "GATEWAY_EMAIL_TIMEOUT", 30.0)) if timeout is None else timeout

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Hand ``email_messages`` to the gateway; return how many were sent.

        Sent means taken by the channel layer, or with ``wait`` delivered by the relay.
        """
        if not email_messages:
            return 0
        prepared = []
        for message in email_messages:
            try:
                prepared.append(email_send_message(message))
            except Exception:
                if not self.fail_silently:
                    raise
        if not prepared:
            return 0
        return async_to_sync(self._send_all)(prepared)

    async def _send_all(self, messages: list[dict[str, Any]]) -> int:
        channel = send_channel("email")
        outcomes = await asyncio.gather(
            *(request(channel, message, wait=self.wait, timeout=self.timeout) for message in messages),
            return_exceptions=True,
        )
        sent = 0
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if not self.fail_silently:
                    raise outcome
            elif isinstance(outcome, dict) and outcome.get("type") == "email.failed":
                if not self.fail_silently:
                    raise GatewayEmailError(outcome)
            else:
                sent += 1
        return sent
