"""aiomqtt with manual acknowledgement: the one place that reaches into it.

aiomqtt 2.x acknowledges every QoS 1 PUBLISH as soon as paho decoded it and
has no public way to wait. The gateway must send PUBACK only after the
channel layer accepted the message, so this module turns on paho's
``manual_ack`` on the client aiomqtt wraps (``Client._client``) and takes
over ``_on_message`` (to keep the ``dup`` flag aiomqtt drops),
``_on_connect`` (to learn whether the broker kept the session) and
``_on_socket_open`` (to read a burst of packets per wake-up, not one).

The private members used, all of ``aiomqtt.Client`` unless named: ``_client``,
``_on_message``, ``_on_connect``, ``_on_socket_open``, ``_queue``,
``_connected``, ``_disconnected``, ``_loop``, ``_misc_loop``, ``_misc_task``;
paho's ``Client._sock``. Checked against aiomqtt 2.2.0, 2.3.0, 2.3.2, 2.4.0,
2.5.0 and 2.5.1 with paho-mqtt 2.2 (aiomqtt 2.1 and older call ``_on_connect``
with paho's first callback API and lose ``session_present``). pyproject allows
aiomqtt 2.2-2.5 and paho-mqtt 2.1-2.2, :func:`check_versions` refuses others,
tests/compat/test_compat_aiomqtt.py fails, naming this module, when an
installed version no longer has what it relies on, and tests/mqtt exercises it
against a real broker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties

#: The aiomqtt minor versions whose internals this module was checked against.
SUPPORTED_AIOMQTT = ((2, 2), (2, 3), (2, 4), (2, 5))
#: The paho-mqtt minor versions whose ``manual_ack``/``ack`` this module uses.
SUPPORTED_PAHO = ((2, 1), (2, 2))
#: Most PUBLISH packets read per wake-up of the socket reader (paho reads one per
#: ``loop_read``); then other tasks run and the reader is woken again if more wait.
READ_BURST = 64


def check_versions() -> None:
    """Raise RuntimeError unless the installed aiomqtt and paho are the checked ones."""
    aiomqtt_version = tuple(aiomqtt.__version_tuple__[:2])
    paho_version = _paho_version()
    if aiomqtt_version not in SUPPORTED_AIOMQTT or paho_version not in SUPPORTED_PAHO:
        raise RuntimeError(
            f"gateways.mqtt.manual_ack supports aiomqtt {_minors(SUPPORTED_AIOMQTT)} with paho-mqtt "
            f"{_minors(SUPPORTED_PAHO)}, found aiomqtt "
            f"{aiomqtt.__version__} and paho-mqtt {'.'.join(map(str, paho_version))}: check the "
            "module against the new versions before widening the pins"
        )


def _minors(versions: tuple[tuple[int, int], ...]) -> str:
    return "/".join(f"{major}.{minor}" for major, minor in versions)


def _paho_version() -> tuple[int, ...]:
    import paho.mqtt

    return tuple(int(p) for p in paho.mqtt.__version__.split(".")[:2])


@dataclass
class Delivery:
    """A PUBLISH received, not yet acknowledged.

    Args:
        topic: the topic name.
        payload: the raw payload.
        qos: the QoS it was delivered at.
        retain: the retain flag.
        dup: the broker's redelivery flag.
        mid: the packet identifier to acknowledge (0 for QoS 0).
        properties: paho's MQTT 5 properties, or None.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    properties: Properties | None


class ManualAckClient(aiomqtt.Client):
    """An :class:`aiomqtt.Client` that leaves PUBACK to :meth:`ack`.

    ``messages`` yields :class:`Delivery` objects. Every QoS 1 delivery must
    be acknowledged with :meth:`ack`, in the order received (MQTT requires
    PUBACKs in PUBLISH order); what is not acknowledged before the
    connection ends is redelivered by the broker on the next connection of
    a persistent session.

    Args:
        *args: as for :class:`aiomqtt.Client`.
        **kwargs: as for :class:`aiomqtt.Client`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_versions()
        super().__init__(*args, **kwargs)
        self._client.manual_ack_set(True)
        #: Deliveries taken from paho so far (one counter in a list: the reader callback
        #: compares it to see whether a read produced one).
        self._received = [0]
        #: Whether the broker resumed a session on connect (None before CONNACK).
        self.session_present: bool | None = None

    @property
    def connected(self) -> bool:
        """Whether the connection is up (and acknowledgements can be sent on it)."""
        return self._connected.done() and not self._connected.exception() and not self._disconnected.done()

    def ack(self, mid: int, qos: int) -> bool:
        """Send PUBACK (QoS 1) or PUBCOMP (QoS 2) for ``mid``; QoS 0 needs none.

        Returns False when the connection is gone: the broker will redeliver.

        Args:
            mid: the delivery's packet identifier.
            qos: the delivery's QoS.
        """
        if qos == 0:
            return True
        if not self.connected:
            return False
        return self._client.ack(mid, qos) == paho.MQTT_ERR_SUCCESS

    async def next_delivery(self) -> Delivery:
        """The next delivery; raises :class:`aiomqtt.MqttError` once the connection is gone.

        Like ``messages.__anext__`` but without a task and a wait per message
        when deliveries are already queued (aiomqtt's iterator makes both).
        """
        queue = self._queue
        if not queue.empty():
            return queue.get_nowait()
        return await self.messages.__anext__()

    # -- aiomqtt internals taken over -------------------------------------

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # Unbounded on purpose: a QoS 1 message dropped here would never be
        # acknowledged, and PUBACKs go in order, so the session would stall;
        # the broker's in-flight window (receive maximum) bounds QoS 1.
        self._received[0] += 1
        self._queue.put_nowait(Delivery(
            topic=message.topic,
            payload=message.payload,
            qos=message.qos,
            retain=bool(message.retain),
            dup=bool(message.dup),
            mid=message.mid,
            properties=getattr(message, "properties", None),
        ))

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # aiomqtt's reader callback reads one packet per wake-up of the event loop
        # (paho's loop_read reads one unless QoS 2 or outgoing messages are pending),
        # so under load every PUBLISH costs a trip through the loop and the hand-off
        # gets one message at a time. This one keeps reading while packets turn into
        # deliveries, up to READ_BURST, then lets other tasks run; like aiomqtt's, it
        # drains what an SSL socket has decoded already (the socket need not be readable
        # for it), and a read error ends the connection.
        received = self._received

        def callback() -> None:
            try:
                burst = 0
                while True:
                    before = received[0]
                    client.loop_read()
                    if hasattr(client._sock, "pending") and client._sock.pending() > 0:  # noqa: SLF001
                        continue
                    burst += 1
                    if received[0] == before or burst >= READ_BURST or client._sock is None:  # noqa: SLF001
                        break
            except Exception as exc:  # noqa: BLE001 - as aiomqtt: a broken connection
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def create_misc_task() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        # Called on paho's connect thread, as in aiomqtt.
        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), callback)
        self._loop.call_soon_threadsafe(create_misc_task)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any = None) -> None:
        self.session_present = bool(getattr(flags, "session_present", False))
        super()._on_connect(client, userdata, flags, reason_code, properties)


async def wait_disconnected(client: ManualAckClient) -> None:
    """Return when ``client``'s connection has ended (cleanly or not).

    Args:
        client: a connected client.
    """
    disconnected = client._disconnected  # noqa: SLF001 - aiomqtt keeps no public signal
    await asyncio.wait([disconnected])
    if not disconnected.cancelled():
        disconnected.exception()  # retrieved: asyncio would log it as never retrieved otherwise
