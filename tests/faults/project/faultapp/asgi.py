import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "faultapp.settings")
import django  # noqa: E402

django.setup()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

from faultapp.consumers import MailRecorder, MqttRecorder, SlackRecorder, WebSocketRecorder  # noqa: E402

application = ProtocolTypeRouter({"channel": ChannelNameRouter({
    "fault.email": MailRecorder.as_asgi(),
    "fault.mqtt": MqttRecorder.as_asgi(),
    "fault.slack": SlackRecorder.as_asgi(),
    "fault.websocket": WebSocketRecorder.as_asgi(),
})})
