import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wstest.settings")
import django  # noqa: E402

django.setup()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

from demo.routing import CHANNELS  # noqa: E402
from wstest.consumers import CheckingConsumer, RejectConsumer, StateConsumer  # noqa: E402

application = ProtocolTypeRouter({"channel": ChannelNameRouter({
    **CHANNELS,
    "websocket.reject": RejectConsumer.as_asgi(),
    "websocket.state": StateConsumer.as_asgi(),
    "websocket.check": CheckingConsumer.as_asgi(),
})})
