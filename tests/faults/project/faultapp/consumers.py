"""Consumers that record each message they handle in the ledger Redis.

The ledger is a redis-server of its own (``FAULT_LEDGER_URL``) that the fault
suite never kills: ``HINCRBY handled:<protocol> <key> 1`` per handled message,
so the test can count what was handled, and how often.
"""

import os

import redis.asyncio

from consumers.email import EmailConsumer, route
from consumers.mqtt import MqttConsumer, topic
from consumers.slack import SlackConsumer
from consumers.websocket import WebSocketConsumer

_ledger = None


async def record(protocol: str, key: str) -> None:
    global _ledger
    if _ledger is None:
        _ledger = redis.asyncio.Redis.from_url(os.environ["FAULT_LEDGER_URL"])
    await _ledger.hincrby(f"handled:{protocol}", key, 1)


class MailRecorder(EmailConsumer):
    routes = [route("got", address=r".*")]

    async def got(self, context):
        await record("email", context.mail.subject)
        await context.reply(text="recorded\n")


class MqttRecorder(MqttConsumer):
    @topic("fault/{client}")
    async def got(self, mqtt):
        await record("mqtt", mqtt.payload)


class SlackRecorder(SlackConsumer):
    async def on_message(self, ctx):
        await record("slack", ctx.text)


class WebSocketRecorder(WebSocketConsumer):
    async def receive(self, ws):
        await record("websocket", ws.text)
        await ws.send(text=ws.text)
