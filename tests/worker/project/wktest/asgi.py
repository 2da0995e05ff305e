import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wktest.settings")
import django  # noqa: E402

django.setup()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

from demo.routing import CHANNELS  # noqa: E402
from wktest.consumers import (FailingConsumer, FailingMailConsumer, FlakyMqttConsumer,  # noqa: E402
                              HoldingConsumer, HoldingStockConsumer, SlowConsumer, SqliteConsumer)

application = ProtocolTypeRouter({"channel": ChannelNameRouter({
    **CHANNELS,
    "worker.slow": SlowConsumer.as_asgi(),
    "worker.fail": FailingConsumer.as_asgi(),
    "worker.sqlite": SqliteConsumer.as_asgi(),
    "mqtt.flaky": FlakyMqttConsumer.as_asgi(),
    "retry.gateway": HoldingConsumer.as_asgi(),
    "retry.stock": HoldingStockConsumer.as_asgi(),
    "email.failing": FailingMailConsumer.as_asgi(),
})})
