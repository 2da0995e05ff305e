"""What a consumer raises to say how its failure should be treated.

``gateway worker`` retries a message whose consumer raised, with backoff,
then dead-letters it (docs/worker.md). A failure that no retry can cure —
a message that is malformed for this consumer, a record that does not
exist, a request the business rules refuse — is raised as
:class:`PermanentFailure`: the message goes to the dead letters at once.
This module imports nothing, so the worker and every consumer can use it.
"""

from __future__ import annotations

#: Set in the scope by a host that retries and dead-letters failed messages
#: (``gateway worker``): a gateway consumer then raises its handlers' exceptions on to it.
RETRIES_SCOPE_KEY = "worker_retries"


class PermanentFailure(Exception):
    """Raised by a handler: this message will never succeed, do not retry it.

    ``gateway worker`` dead-letters the message at once with this exception
    and its traceback (and its cause, when raised ``from`` another one)::

        async def mqtt_publish(self, context):
            try:
                reading = float(context.payload)
            except ValueError as exc:
                raise PermanentFailure(f"not a number: {context.payload!r}") from exc
    """
