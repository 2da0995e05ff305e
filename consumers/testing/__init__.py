"""Test kit for gateway consumers: drive a consumer with protocol messages, no gateway, no Redis.

One shape for the four protocols, after Channels' ``WebsocketCommunicator``::

    from consumers.testing import WebSocketCommunicator

    async def test_echo():
        async with WebSocketCommunicator(EchoConsumer, "/echo/") as ws:
            assert (await ws.connect())[0]
            await ws.send_to(text_data="hi")
            assert await ws.receive_from() == "hi"

- :class:`WebSocketCommunicator` — a client connection (``websocket.*``).
- :class:`EmailCommunicator` — deliver mail, read ``email.send`` and acks.
- :class:`MqttCommunicator` — publish on a topic, read ``mqtt.send`` requests.
- :class:`SlackCommunicator` — inject Slack events, read ``slack.send`` and acks.
- :class:`ConsumerHarness` — the engine under them, for any other message.

Each runs the consumer on a private in-memory layer with ``stats`` of its
own; a handler's exception is raised again from the test's next await; what
is built and what the consumer sends is checked against the protocol's
schema; waits end when the consumer has finished, not after a pause. See
``docs/testing.md``.
"""

from __future__ import annotations

from consumers.testing.email import EmailCommunicator, email_receive
from consumers.testing.harness import Communicator, ConsumerHarness, InvalidMessage, NothingSent, check_message
from consumers.testing.mqtt import MqttCommunicator, mqtt_publish
from consumers.testing.slack import SlackCommunicator, slack_event
from consumers.testing.websocket import WebSocketCommunicator

__all__ = [
    "Communicator", "ConsumerHarness", "EmailCommunicator", "InvalidMessage", "MqttCommunicator", "NothingSent",
    "SlackCommunicator", "WebSocketCommunicator", "check_message", "email_receive", "mqtt_publish", "slack_event",
]
