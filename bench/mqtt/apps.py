"""The consumers the MQTT benchmark runs: one per system, the same counting logic.

Every system's consumer counts the messages on ``bench/in/<k>``; ``PING``
is answered with ``pong`` on ``bench/done`` (readiness), and ``END:<k>``
closes topic ``k``; after the last topic closes it publishes the count on
``bench/done`` (``COUNT`` asks for it when an ``END`` was dropped). Order per topic makes ``END`` arrive after that topic's
messages on every system measured here.
"""

from __future__ import annotations

from channels.routing import ChannelNameRouter
from mqttasgi.consumers import MqttConsumer as MqttAsgiConsumer

from consumers.mqtt import MqttConsumer, MqttContext, topic


class Tally:
    """The counting shared by every system's consumer."""

    def __init__(self) -> None:
        self.count = 0
        self.ended = 0

    def see(self, payload: bytes) -> bytes | None:
        """Count ``payload``; return what to publish on bench/done, if anything."""
        if payload == b"PING":
            return b"pong"
        if payload == b"COUNT":  # asked when an END was lost (QoS 0): report what arrived
            done = str(self.count).encode()
            self.count = self.ended = 0
            return done
        if payload.startswith(b"END:"):
            self.ended += 1
            if self.ended == int(payload[4:]):
                done = str(self.count).encode()
                self.count = self.ended = 0
                return done
            return None
        self.count += 1
        return None


class GatewayBenchConsumer(MqttConsumer):
    """Under runworker, fed by the MQTT gateway through the layer."""

    tally = Tally()

    @topic("bench/in/{k}")
    async def counted(self, mqtt: MqttContext) -> None:
        answer = self.tally.see(mqtt.payload)
        if answer is not None:
            await mqtt.publish("bench/done", answer, qos=1)


class MqttAsgiBenchConsumer(MqttAsgiConsumer):
    """Under mqttasgi (the bridge users would otherwise pick)."""

    tally = Tally()
    qos = 0

    async def connect(self) -> None:
        await self.subscribe("bench/in/#", type(self).qos)

    async def receive(self, mqtt_message: dict) -> None:
        payload = mqtt_message["payload"]
        answer = self.tally.see(payload if isinstance(payload, bytes) else str(payload).encode())
        if answer is not None:
            await self.publish("bench/done", answer, qos=1)

    async def disconnect(self) -> None:
        pass


class MqttAsgiBenchConsumerQos1(MqttAsgiBenchConsumer):
    """The same at QoS 1."""

    qos = 1


#: mqttasgi's applications (``bench.mqtt.apps:mqttasgi_qos0``).
mqttasgi_qos0 = MqttAsgiBenchConsumer.as_asgi()
mqttasgi_qos1 = MqttAsgiBenchConsumerQos1.as_asgi()


#: runworker's application: the gateway's bench channel.
application = ChannelNameRouter({"mqtt.bench": GatewayBenchConsumer.as_asgi()})
