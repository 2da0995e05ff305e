"""Which consumer handles which channel.

The gateways' YAML routes traffic to these channel names (config/demo.yaml);
`gateway up` runs workers for every channel the config routes to.
"""

from demo.email_consumers import DemoMailConsumer
from demo.mqtt_consumers import MqttEchoConsumer
from demo.slack_consumers import DemoSlackConsumer
from demo.websocket_consumers import ChatConsumer, EchoConsumer

CHANNELS = {
    "email.receive": DemoMailConsumer.as_asgi(),
    "websocket.echo": EchoConsumer.as_asgi(),
    "websocket.chat": ChatConsumer.as_asgi(),
    "mqtt.echo": MqttEchoConsumer.as_asgi(),
    "slack.receive": DemoSlackConsumer.as_asgi(),
}
