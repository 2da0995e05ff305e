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


# --------------------------------------------------------------------------
# Retries (tests/worker/test_retries.py): every attempt is reported on the
# layer channel ``retry.attempts``, every success on the message's reply
# channel (or ``retry.handled``), so the test counts them across processes.

from consumers import PermanentFailure  # noqa: E402
from consumers.email import EmailConsumer  # noqa: E402
from consumers.mqtt import MqttConsumer  # noqa: E402


class Attempts:
    """Attempts per message key in this worker process; reported on ``retry.attempts``."""

    counts: dict = {}

    @classmethod
    async def count(cls, layer, key) -> int:
        cls.counts[key] = cls.counts.get(key, 0) + 1
        await layer.send("retry.attempts", {"type": "attempt", "key": key, "n": cls.counts[key]})
        return cls.counts[key]


class FlakyMqttConsumer(MqttConsumer):
    """Fails the first attempt of each MQTT message, then reports it handled."""

    async def mqtt_publish(self, mqtt):
        if await Attempts.count(self.channel_layer, mqtt.id) == 1:
            raise RuntimeError(f"first attempt at {mqtt.topic} fails (on purpose)")
        await mqtt.send_to("retry.handled", {"type": "handled", "topic": mqtt.topic,
                                             "payload": bytes(mqtt.message["payload"]).decode()})


class HoldingConsumer(GatewayConsumer):
    """``work`` messages of conversation ``hold`` fail until conversation ``go``
    reached its ``release`` message: its conversation must wait, others go on.
    ``permanent`` raises PermanentFailure; ``always`` fails every time."""

    conversation_key = "conv"
    released: set = set()

    async def work(self, ctx):
        await handle_work(self.channel_layer, ctx.message, self.released)


class HoldingStockConsumer(AsyncConsumer):
    """The same as a stock Channels consumer (its instance dies on a failure)."""

    conversation_key = "conv"
    released: set = set()

    async def work(self, message):
        await handle_work(self.channel_layer, message, self.released)


async def handle_work(layer, message, released):
    key = f"{message['conv']}-{message['n']}"
    await Attempts.count(layer, key)
    if message.get("permanent"):
        raise PermanentFailure(f"{key} can never succeed (on purpose)")
    if message.get("always"):
        raise RuntimeError(f"{key} fails every time (on purpose)")
    if message.get("until") and message["until"] not in released:
        raise RuntimeError(f"{key} waits for {message['until']} (on purpose)")
    if message.get("release"):
        released.add(message["release"])
    await layer.send(message["reply_channel"], {"type": "done", "conv": message["conv"], "n": message["n"]})


class FailingMailConsumer(EmailConsumer):
    """Fails the first ``X-Fails: N`` header's count of attempts at each mail (``always``: every time)."""

    async def email_receive(self, context):
        attempt = await Attempts.count(self.channel_layer, context.message["id"])
        fails = context.mail.header("X-Fails", "0")
        if fails == "always" or attempt <= int(fails):
            raise RuntimeError(f"attempt {attempt} at {context.mail.subject} fails (on purpose)")
        await context.send_to("retry.handled", {"type": "handled", "id": context.message["id"],
                                                "subject": context.mail.subject})
