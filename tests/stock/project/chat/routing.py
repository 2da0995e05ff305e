# chat/routing.py -- the tutorial's routing, plus the other consumers under test.
from django.urls import re_path

from . import consumers, other_consumers

websocket_urlpatterns = [
    re_path(r"ws/chat/(?P<room_name>\w+)/$", consumers.ChatConsumer.as_asgi()),
    re_path(r"ws/whoami/$", other_consumers.WhoAmIConsumer.as_asgi()),
    re_path(r"ws/scope/(?P<name>[^/]+)/$", other_consumers.ScopeConsumer.as_asgi()),
    re_path(r"ws/sync/$", other_consumers.SyncEchoConsumer.as_asgi()),
    re_path(r"ws/syncjson/$", other_consumers.SyncJsonConsumer.as_asgi()),
    re_path(r"ws/plain/$", other_consumers.PlainConsumer.as_asgi()),
    re_path(r"ws/news/$", other_consumers.NewsConsumer.as_asgi()),
]
