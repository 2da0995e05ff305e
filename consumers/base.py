"""The base consumer every protocol's consumer class builds on.

Under ``runworker`` one consumer instance serves a whole channel, so nothing
about a client may live on ``self``. Each message is handed to its handler as
a :class:`MessageContext` that carries everything the handler needs, and a
handler that raises, or a message of a type nobody handles, is logged and
counted without killing the instance (stock ``dispatch`` raises, and the
instance's queue is lost with it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from channels.consumer import AsyncConsumer, get_handler_name
from channels.db import database_sync_to_async

from consumers.failures import RETRIES_SCOPE_KEY, PermanentFailure
from consumers.send import DEFAULT_TIMEOUT, request
from gateways.core import tracing
from gateways.core.describe import describe

logger = logging.getLogger("consumers")

__all__ = ["GatewayConsumer", "MessageContext", "PermanentFailure", "RETRIES_SCOPE_KEY"]


class MessageContext:
    """One message and the means to answer it.

    Args:
        consumer: the consumer instance handling it.
        message: the message as received.
    """

    def __init__(self, consumer: "GatewayConsumer", message: dict[str, Any]) -> None:
        self.consumer = consumer
        self.message = message
        self.channel_layer = consumer.channel_layer

    @property
    def type(self) -> str:
        """The message's ``type``."""
        return self.message["type"]

    @property
    def reply_channel(self) -> str | None:
        """Where the gateway listens for answers to this message."""
        return self.message.get("reply_channel")

    async def send_to(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` on ``channel`` through the layer."""
        await self.channel_layer.send(channel, message)

    async def request(self, channel: str, message: dict[str, Any], *, wait: bool = False,
                      timeout: float = DEFAULT_TIMEOUT) -> str | dict[str, Any] | None:
        """Send ``message`` to a gateway on ``channel``; return its ``id``, or with
        ``wait`` the gateway's result message (``TimeoutError`` after ``timeout`` s).

        The protocol contexts' ``send()``/``reply()`` take ``wait`` and ``timeout``
        through this; it is :func:`consumers.send.request` on this consumer's layer.
        A handler that waits holds its conversation meanwhile: under ``gateway
        worker`` the next message of the same topic, channel or connection waits too.
        """
        return await request(channel, message, wait=wait, timeout=timeout, layer=self.channel_layer)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every channel in ``group``."""
        await self.channel_layer.group_send(group, message)


class GatewayConsumer(AsyncConsumer):
    """Dispatches gateway messages to ``<type with _ for .>`` handlers.

    A handler takes the :class:`MessageContext` (``context_class``); it may be
    ``async def`` or plain ``def`` (run in a thread with database access).
    ``stats`` counts handled, failed and unhandled messages per class.

    Under ``gateway worker`` a handler's exception is raised on after
    :meth:`handler_failed`, so that the worker retries the message and at
    last dead-letters it (raise :class:`PermanentFailure` to skip the
    retries); under ``runworker`` it is logged and the message dropped.
    """

    context_class: type[MessageContext] = MessageContext
    stats: collections.Counter = collections.Counter()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "stats" not in cls.__dict__:
            cls.stats = collections.Counter()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Run the handler for ``message``; log and count what goes wrong.

        A log line about a message names the channel it came from and the
        message (type, ``id`` and protocol key: see
        :func:`gateways.core.describe.describe`).
        """
        # The message's trace (when tracing is on) is current while it is handled,
        # so that what the handler sends carries it on.
        with tracing.consuming(message, self.scope.get("channel")):
            await self._dispatch(message)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        try:
            handler = getattr(self, get_handler_name(message), None)
        except ValueError:
            handler = None
        if handler is None:
            self.stats["unhandled"] += 1
            logger.warning("%s on %s: no handler for %s", type(self).__name__,
                           self.scope.get("channel", "?"), describe(message))
            return
        context = self.context_class(self, message)
        try:
            if asyncio.iscoroutinefunction(handler):
                await handler(context)
            else:
                await database_sync_to_async(handler)(context)
        except Exception:
            self.stats["failed"] += 1
            if self.scope.get(RETRIES_SCOPE_KEY):  # the worker logs, retries, dead-letters
                await self.handler_failed(context)
                raise
            logger.exception("%s on %s: handler failed for %s", type(self).__name__,
                             self.scope.get("channel", "?"), describe(message))
            await self.handler_failed(context)
            return
        self.stats["handled"] += 1
        await self.handler_done(context)

    async def handler_done(self, context: MessageContext) -> None:
        """Called after a handler returned (email acknowledges here)."""

    async def handler_failed(self, context: MessageContext) -> None:
        """Called after a handler raised (under ``gateway worker``: after each failed attempt)."""
