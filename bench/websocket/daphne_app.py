"""The baseline users compare with: Daphne serving an in-process Channels echo consumer."""

import os

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["channels"], SECRET_KEY="bench", ALLOWED_HOSTS=["*"],
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


application = ProtocolTypeRouter({"websocket": URLRouter([re_path(r"^echo/$", Echo.as_asgi())])})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "")
