"""email.receive handled by a consumer that does nothing but acknowledge (the stock runworker path)."""

import django

django.setup()

from channels.routing import ChannelNameRouter  # noqa: E402

from consumers.email import EmailConsumer, EmailContext  # noqa: E402


class AckOnly(EmailConsumer):
    """Handles every message by returning; the base class sends email.ack."""

    async def email_receive(self, context: EmailContext) -> None:
        return None


application = ChannelNameRouter({"email.receive": AckOnly.as_asgi()})
