import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wstest.settings")
import django  # noqa: E402

django.setup()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

from demo.routing import CHANNELS  # noqa: E402
from wstest.consumers import (  # noqa: E402
    AutoStateConsumer,
    CheckingConsumer,
    RejectConsumer,
    RoomConsumer,
    SlowAcceptConsumer,
    StateConsumer,
)

application = ProtocolTypeRouter({"channel": ChannelNameRouter({
    **CHANNELS,
    "websocket.reject": RejectConsumer.as_asgi(),
    "websocket.state": StateConsumer.as_asgi(),
    "websocket.check": CheckingConsumer.as_asgi(),
    "websocket.room": RoomConsumer.as_asgi(),
    "websocket.autostate": AutoStateConsumer.as_asgi(),
    "websocket.slowaccept": SlowAcceptConsumer.as_asgi(),
})})
