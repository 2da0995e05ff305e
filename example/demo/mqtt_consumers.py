"""The demo's MQTT consumer: a message on `echo/<rest>` comes back on `echo-reply/<rest>`."""

from consumers.mqtt import MqttConsumer, MqttContext, topic


class MqttEchoConsumer(MqttConsumer):
    """Publishes every `echo/<rest>` message on `echo-reply/<rest>`, same payload and QoS.

    The gateway subscribes at QoS 1 at most, so a QoS 2 message is delivered,
    and echoed, at QoS 1.
    """

    @topic("echo/{rest:#}")
    async def echo(self, mqtt: MqttContext) -> None:
        await mqtt.publish(f"echo-reply/{mqtt.kwargs['rest']}", mqtt.payload, qos=mqtt.qos,
                           properties=_echoed(mqtt.properties))


def _echoed(properties: dict) -> dict:
    # Only what a publish may carry: subscription identifiers are the broker's.
    return {k: v for k, v in properties.items() if k != "subscription_identifiers"}
