import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wbench.settings")
import django  # noqa: E402

django.setup()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

from wbench.consumers import AsyncEcho, SyncEcho  # noqa: E402

application = ProtocolTypeRouter({"channel": ChannelNameRouter({
    "bench.async": AsyncEcho.as_asgi(),
    "bench.sync": SyncEcho.as_asgi(),
})})
