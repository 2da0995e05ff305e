"""The demo's email consumer: echo@demo.local answers every message it may.

The answer goes to the envelope sender with subject ``Re: <subject>``, the
same plain-text body, In-Reply-To and References set and
``Auto-Submitted: auto-replied``; never to a bounce (``<>``) nor to mail
that is itself automatic or bulk (RFC 3834).
"""

import logging

from consumers.email import EmailConsumer, EmailContext, route

logger = logging.getLogger("demo.email")


class DemoMailConsumer(EmailConsumer):
    """Handles the ``email.receive`` channel of the demo."""

    routes = [route("echo", address=r"echo@demo\.local")]

    async def echo(self, context: EmailContext) -> None:
        mail = context.mail
        if not mail.auto_reply_allowed():
            logger.info("not answering %s from <%s>: automatic, bulk or a bounce", mail.message_id,
                        mail.envelope_from)
            return
        await context.reply(text=mail.text or "", sender="echo@demo.local", auto=True)
