"""Consumers the worker tests drive through a real `gateway worker`."""

import asyncio
import threading

from asgiref.sync import async_to_sync
from channels.consumer import AsyncConsumer
from django.db import transaction

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


class SqliteConsumer(GatewayConsumer):
    """A sync handler writing a row per message to the project's SQLite file.

    It reads before it writes in one transaction (as ``get_or_create`` and
    friends do): two such transactions at once on SQLite end in ``database
    is locked``. Every message gets one answer on its reply channel: ``done``
    with the writing thread, or ``failed`` (see :meth:`handler_failed`).
    A message with ``barrier: N`` first waits until N handlers are inside at
    once, which only parallel threads can reach; one with ``write: false``
    leaves the database alone.
    """

    conversation_key = "conv"
    barriers: dict[int, threading.Barrier] = {}
    lock = threading.Lock()

    def reading(self, ctx):
        parties = ctx.message.get("barrier")
        if parties:
            with self.lock:
                barrier = self.barriers.setdefault(parties, threading.Barrier(parties, timeout=20))
            barrier.wait()
        if ctx.message.get("write", True):
            self.write(ctx.message)
        async_to_sync(ctx.send_to)(ctx.reply_channel, {"type": "done", "conv": ctx.message["conv"],
                                                       "n": ctx.message["n"], "thread": threading.get_ident()})

    @staticmethod
    def write(message):
        from wktest.models import Reading

        with transaction.atomic():
            before = Reading.objects.filter(conv=message["conv"]).count()
            Reading.objects.create(conv=message["conv"], n=message["n"], before=before,
                                   thread=threading.get_ident())

    async def handler_failed(self, ctx):
        await ctx.send_to(ctx.reply_channel, {"type": "failed", "conv": ctx.message["conv"], "n": ctx.message["n"]})
