"""Stock Channels consumers, served by Daphne or behind the gateway, unchanged.

``EchoConsumer`` is the usual AsyncWebsocketConsumer echo; ``ChatConsumer`` is
the Channels tutorial's (group_add in connect, group_send in receive, a
chat_message handler). The same ``URLRouter`` is the ``websocket`` application
(Daphne) and the ``websocket.app`` channel's (``gateway worker``).
"""

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.websocket.stock_settings")

import django  # noqa: E402

django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data):
        message = json.loads(text_data)["message"]
        await self.channel_layer.group_send(self.room_group_name, {"type": "chat.message", "message": message})

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({"message": event["message"]}))


websocket = URLRouter([
    re_path(r"^ws/echo/$", EchoConsumer.as_asgi()),
    re_path(r"^ws/chat/(?P<room_name>\w+)/$", ChatConsumer.as_asgi()),
])

application = ProtocolTypeRouter({"websocket": websocket, "channel": ChannelNameRouter({"websocket.app": websocket})})
