"""More consumers written for Daphne: each stock consumer class, the scope, auth and the database."""

from asgiref.sync import async_to_sync
from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import (
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
    WebsocketConsumer,
)


class WhoAmIConsumer(AsyncJsonWebsocketConsumer):
    """Answers with the logged-in user (AuthMiddlewareStack), from the database."""

    async def connect(self):
        await self.accept()
        await self.send_json(await self.describe("connect"))

    async def receive_json(self, content):
        await self.send_json(await self.describe(content.get("say", "")))

    @database_sync_to_async
    def describe(self, said):
        from django.contrib.auth.models import User

        user = self.scope["user"]
        return {
            "said": said,
            "user": user.username if user.is_authenticated else None,
            "users_in_db": User.objects.count(),
            "session_color": self.scope["session"].get("color"),
        }


class ScopeConsumer(AsyncJsonWebsocketConsumer):
    """Shows the scope; accepts with a subprotocol and a header; closes with a code."""

    async def connect(self):
        if self.scope["query_string"] == b"reject=1":
            await self.close(code=4003)
            return
        offered = self.scope["subprotocols"]
        await self.accept(subprotocol=offered[-1] if offered else None, headers=[(b"x-chat", b"yes")])
        scope = self.scope
        await self.send_json({
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode(),
            "query_string": scope["query_string"].decode(),
            "kwargs": scope["url_route"]["kwargs"],
            "client_is_local": scope["client"][0] == "127.0.0.1",
            "server_port": scope["server"][1],
            "subprotocols": scope["subprotocols"],
            "has_user_agent": any(name == b"user-agent" for name, _ in scope["headers"]),
            "channel_name": self.channel_name,
        })

    async def receive_json(self, content):
        if content.get("close"):
            await self.close(code=content["close"], reason=content.get("reason"))


class SyncEchoConsumer(WebsocketConsumer):
    """The sync consumer class: echoes text and bytes, joins a group."""

    def connect(self):
        async_to_sync(self.channel_layer.group_add)("sync_echo", self.channel_name)
        self.accept()

    def disconnect(self, code):
        async_to_sync(self.channel_layer.group_discard)("sync_echo", self.channel_name)

    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=text_data, bytes_data=bytes_data)

    def echo_announce(self, event):
        self.send(text_data=f"announced: {event['text']}")


class SyncJsonConsumer(JsonWebsocketConsumer):
    """The sync JSON consumer class."""

    def connect(self):
        self.accept()

    def receive_json(self, content):
        self.send_json({"doubled": content["n"] * 2})


class PlainConsumer(AsyncConsumer):
    """A plain AsyncConsumer with websocket_* handlers (no generic class)."""

    async def websocket_connect(self, message):
        self.count = 0
        await self.send({"type": "websocket.accept"})

    async def websocket_receive(self, message):
        self.count += 1
        await self.send({"type": "websocket.send", "text": f"{self.count}: {message['text']}"})

    async def websocket_disconnect(self, message):
        raise StopConsumer()


class NewsConsumer(AsyncWebsocketConsumer):
    """Puts its connection in a group the gateway keeps (not the instance's channel):
    a broadcast to it reaches the socket without waking any consumer, and the
    membership outlives the instance (a worker restart) until the socket closes."""

    async def connect(self):
        await self.accept()
        await self.base_send({"type": "websocket.group_add", "group": "news"})
