"""Drive a consumer with gateway messages, without a gateway or Redis.

::

    async with ConsumerHarness(EchoConsumer, "websocket.echo") as harness:
        reply_channel = await harness.new_reply_channel()
        await harness.deliver({...a websocket.receive message...})
        sent = await harness.sent(reply_channel)

The consumer runs as ``runworker`` runs it (one instance for the channel, an
``{"type": "channel"}`` scope) on a private in-memory layer, so what it sends
can be read back from that layer.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from asgiref.testing import ApplicationCommunicator
from channels.layers import InMemoryChannelLayer, channel_layers


class ConsumerHarness:
    """One consumer instance serving ``channel`` on its own in-memory layer.

    Args:
        consumer_class: the consumer to run.
        channel: the channel it serves (as in ``ChannelNameRouter``).
    """

    def __init__(self, consumer_class: Any, channel: str = "test.channel") -> None:
        self.layer = InMemoryChannelLayer(capacity=10000)
        self.alias = f"consumer-harness-{uuid.uuid4().hex}"
        channel_layers.set(self.alias, self.layer)
        # A subclass that uses the private layer; it shares the class's ``stats``.
        namespace = {"channel_layer_alias": self.alias}
        if hasattr(consumer_class, "stats"):
            namespace["stats"] = consumer_class.stats
        harnessed = type(consumer_class.__name__, (consumer_class,), namespace)
        app = harnessed.as_asgi()
        self.channel = channel
        self.communicator = ApplicationCommunicator(app, {"type": "channel", "channel": channel})

    async def __aenter__(self) -> "ConsumerHarness":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def new_reply_channel(self) -> str:
        """A reply channel on the harness's layer, as a gateway would make."""
        return await self.layer.new_channel()

    async def deliver(self, message: dict[str, Any]) -> None:
        """Hand ``message`` to the consumer as if it arrived on its channel."""
        await self.communicator.send_input(message)

    async def sent(self, channel: str, timeout: float = 2.0) -> dict[str, Any]:
        """The next message the consumer sent to ``channel``; TimeoutError if none."""
        return await asyncio.wait_for(self.layer.receive(channel), timeout)

    async def nothing_sent(self, channel: str, wait: float = 0.2) -> bool:
        """True when nothing arrives on ``channel`` within ``wait`` seconds."""
        try:
            await asyncio.wait_for(self.layer.receive(channel), wait)
        except asyncio.TimeoutError:
            return True
        return False

    async def close(self) -> None:
        """Stop the consumer instance and forget the layer."""
        try:
            await self.communicator.wait(0.05)
        except asyncio.TimeoutError:
            pass
        finally:
            self.communicator.future.cancel()
            try:
                await self.communicator.future
            except (asyncio.CancelledError, Exception):
                pass
            channel_layers.backends.pop(self.alias, None)
