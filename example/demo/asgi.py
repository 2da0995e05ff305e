"""The demo's ASGI application: HTTP views plus the gateways' channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
django_asgi = get_asgi_application()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

from demo.routing import CHANNELS  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi, "channel": ChannelNameRouter(CHANNELS)})
