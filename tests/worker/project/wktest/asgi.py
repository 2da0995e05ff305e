import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wktest.settings")
import django  # noqa: E402

django.setup()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

from demo.routing import CHANNELS  # noqa: E402
from wktest.consumers import FailingConsumer, SlowConsumer, SqliteConsumer  # noqa: E402

application = ProtocolTypeRouter({"channel": ChannelNameRouter({
    **CHANNELS,
    "worker.slow": SlowConsumer.as_asgi(),
    "worker.fail": FailingConsumer.as_asgi(),
    "worker.sqlite": SqliteConsumer.as_asgi(),
})})
