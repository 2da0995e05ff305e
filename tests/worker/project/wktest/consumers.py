"""Consumers the worker tests drive through a real `gateway worker`."""

import asyncio

from channels.consumer import AsyncConsumer

from consumers.base import GatewayConsumer


class SlowConsumer(GatewayConsumer):
    """Reports each message to its reply channel after a little work."""

    conversation_key = "conv"

    async def work(self, ctx):
        await asyncio.sleep(ctx.message.get("delay", 0.05))
        await ctx.send_to(ctx.reply_channel, {"type": "done", "conv": ctx.message["conv"], "n": ctx.message["n"]})


class FailingConsumer(AsyncConsumer):
    """A plain Channels consumer (its dispatch raises): fails on ``boom`` messages."""

    conversation_key = "conv"

    async def work(self, message):
        if message.get("boom"):
            raise RuntimeError(f"boom in {message['conv']} (on purpose)")
        await self.channel_layer.send(message["reply_channel"],
                                      {"type": "done", "conv": message["conv"], "n": message["n"]})
