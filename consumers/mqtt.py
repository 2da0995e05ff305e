"""Consumers for ``mqtt.*`` messages (protocol_specs/mqtt.md).

::

    class Devices(MqttConsumer):
        @topic("sensors/{device}/temperature")
        async def temperature(self, mqtt):
            await mqtt.publish(f"commands/{mqtt.kwargs['device']}", b"ack", qos=1)

An instance may serve many topics (under ``runworker`` one instance serves
the whole channel; under ``gateway worker`` each lane has its own, see
docs/worker.md), so keep nothing about a message or a device on ``self``:
``mqtt`` (an :class:`MqttContext`) is the message being handled. Routes are topic
filters whose levels may be named: ``{name}`` matches one level (``+``) and
``{name:#}`` the rest of the topic (``#``, last level only); the values are
in ``mqtt.kwargs``. The first route that matches handles the message.

Publishing, subscribing and unsubscribing are messages to the gateway's
outbound channel (``mqtt.send``). Each takes an ``id`` and returns the
request's ``id``; pass ``wait=True`` to get its ``mqtt.result`` back (on a
channel made for it, with an id generated when you gave none), or
``reply_channel`` (your consumer's ``self.channel_name``, say) to have it
delivered to :meth:`MqttConsumer.result`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from channels.db import database_sync_to_async

from consumers.base import GatewayConsumer, MessageContext
from consumers.send import DEFAULT_TIMEOUT, request
# The request builders live next to the spec, where consumers.send finds them too;
# imported here as part of this module's API.
from protocol_specs.mqtt import publish_message, subscribe_message, unsubscribe_message

logger = logging.getLogger("consumers.mqtt")

#: The gateway's default outbound channel.
SEND_CHANNEL = "mqtt.send"

_NAMED = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(:#)?\}$")


@dataclass(frozen=True)
class TopicRoute:
    """A topic filter with named levels, compiled.

    Args:
        pattern: the pattern as written, e.g. ``sensors/{device}/#``.
        filter: the plain MQTT filter it stands for, e.g. ``sensors/+/#``.
        regex: matches topics, with a group per named level.
    """

    pattern: str
    filter: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str) -> "TopicRoute":
        """Compile ``pattern``; raise ValueError naming what is wrong.

        Args:
            pattern: a topic filter whose levels may be ``{name}`` or ``{name:#}``.
        """
        levels = pattern.split("/")
        plain, parts = [], []
        for index, level in enumerate(levels):
            named = _NAMED.match(level)
            last = index == len(levels) - 1
            if level == "#" or (named and named.group(2)):
                if not last:
                    raise ValueError(f"{pattern!r}: a multi-level wildcard must be the last level")
                plain.append("#")
                tail = f"(?P<{named.group(1)}>.*)" if named else ".*"
                # '#' also matches the parent level itself: "a/#" matches "a".
                regex = "/".join(parts) + f"(?:/{tail})?" if parts else tail
                return cls(pattern, "/".join(plain), re.compile(f"^{regex}$"))
            if named:
                plain.append("+")
                parts.append(f"(?P<{named.group(1)}>[^/]*)")
            elif level == "+":
                plain.append("+")
                parts.append("[^/]*")
            elif "+" in level or "#" in level or "{" in level or "}" in level:
                raise ValueError(f"{pattern!r}: level {level!r} must be a word, +, #, {{name}} or {{name:#}}")
            else:
                plain.append(level)
                parts.append(re.escape(level))
        return cls(pattern, "/".join(plain), re.compile("^" + "/".join(parts) + "$"))

    def match(self, topic: str) -> dict[str, str] | None:
        """The named levels of ``topic`` when it matches, else None.

        Args:
            topic: a topic name.
        """
        if topic.startswith("$") and self.filter[:1] in ("+", "#"):
            return None
        found = self.regex.match(topic)
        if found is None:
            return None
        return {k: v or "" for k, v in found.groupdict().items()}


def topic(pattern: str) -> Callable[[Callable], Callable]:
    """Route ``mqtt.publish`` messages whose topic matches ``pattern`` to the decorated method.

    Args:
        pattern: a topic filter with optional named levels (see :class:`TopicRoute`).
    """
    route = TopicRoute.compile(pattern)

    def decorate(method: Callable) -> Callable:
        method._mqtt_routes = [*getattr(method, "_mqtt_routes", []), route]  # type: ignore[attr-defined]
        return method

    return decorate


class MqttContext(MessageContext):
    """One ``mqtt.*`` message and the means to answer it."""

    #: Named levels of the route that matched (set by :class:`MqttConsumer`).
    kwargs: dict[str, str]

    def __init__(self, consumer: GatewayConsumer, message: dict[str, Any]) -> None:
        super().__init__(consumer, message)
        self.kwargs = {}

    @property
    def id(self) -> str:
        """The message's unique id."""
        return self.message.get("id", "")

    @property
    def topic(self) -> str:
        """The topic it was published on."""
        return self.message["topic"]

    @property
    def payload(self) -> Any:
        """The payload: bytes, or str/JSON value when the subscription decodes."""
        return self.message.get("payload")

    @property
    def qos(self) -> int:
        """The QoS it was delivered at."""
        return self.message.get("qos", 0)

    @property
    def retain(self) -> bool:
        """Whether it is a retained message."""
        return self.message.get("retain", False)

    @property
    def dup(self) -> bool:
        """Whether the broker flagged it as a redelivery."""
        return self.message.get("dup", False)

    @property
    def subscription(self) -> str | None:
        """The gateway subscription it matched."""
        return self.message.get("subscription")

    @property
    def properties(self) -> dict[str, Any]:
        """Its MQTT 5 properties ({} for MQTT 3.1.1)."""
        return self.message.get("properties") or {}

    @property
    def response_topic(self) -> str | None:
        """The MQTT 5 response topic a requester asked for, if any."""
        return self.properties.get("response_topic")

    @property
    def error(self) -> str | None:
        """Why the payload did not decode (``mqtt.undecodable``), or why a request failed (``mqtt.result``)."""
        return self.message.get("error")

    @property
    def ok(self) -> bool:
        """Whether an ``mqtt.result`` reports success."""
        return bool(self.message.get("ok"))

    @property
    def send_channel(self) -> str:
        """The gateway's outbound channel (the message's reply_channel, or ``mqtt.send``)."""
        return self.reply_channel or getattr(self.consumer, "send_channel", SEND_CHANNEL)

    async def publish(self, topic: str, payload: bytes | str | None = b"", qos: int = 0, retain: bool = False,
                      properties: dict[str, Any] | None = None, reply_channel: str | None = None,
                      id: str | None = None, *, wait: bool = False,
                      timeout: float = DEFAULT_TIMEOUT) -> str | dict[str, Any] | None:
        """Ask the gateway to publish (arguments as in :func:`publish_message`).

        Returns the request's ``id`` (``id``, or one generated for a
        ``reply_channel``; else None); with ``wait``, the ``mqtt.result``
        (``ok`` once the broker confirmed it), or ``TimeoutError`` after
        ``timeout`` seconds.
        """
        return await self.request(self.send_channel,
                                  publish_message(topic, payload, qos, retain, properties, reply_channel, id),
                                  wait=wait, timeout=timeout)

    async def respond(self, payload: bytes | str | None, qos: int | None = None,
                      properties: dict[str, Any] | None = None) -> bool:
        """Answer an MQTT 5 request: publish to its response topic with its correlation data.

        Returns False (publishing nothing) when the message named no response topic.

        Args:
            payload: the response.
            qos: defaults to the request's QoS.
            properties: more properties (user_properties, content_type, ...).
        """
        if not self.response_topic:
            return False
        props = dict(properties or {})
        if "correlation_data" in self.properties:
            props["correlation_data"] = self.properties["correlation_data"]
        await self.publish(self.response_topic, payload, self.qos if qos is None else qos, False, props)
        return True

    async def subscribe(self, filter: str, qos: int = 1, channel: str | None = None,
                        decode: str = "bytes", reply_channel: str | None = None, id: str | None = None, *,
                        wait: bool = False, timeout: float = DEFAULT_TIMEOUT) -> str | dict[str, Any] | None:
        """Ask the gateway instance that receives this to subscribe at runtime.

        Args:
            filter: the topic filter.
            qos: 0 or 1 (2 is served at 1).
            channel: where its messages go (default ``mqtt.publish``).
            decode: ``bytes``, ``text`` or ``json``.
            reply_channel: where the ``mqtt.result`` goes.
            id: the request's id, echoed in the result (generated with ``wait``).
            wait: return the ``mqtt.result`` (``granted_qos``) instead of the id.
            timeout: seconds to wait for it (``TimeoutError`` then).
        """
        return await self.request(self.send_channel,
                                  subscribe_message(filter, qos, channel, decode, reply_channel, id),
                                  wait=wait, timeout=timeout)

    async def unsubscribe(self, filter: str, reply_channel: str | None = None, id: str | None = None, *,
                          wait: bool = False, timeout: float = DEFAULT_TIMEOUT) -> str | dict[str, Any] | None:
        """Ask the gateway to remove a runtime subscription (returns as :meth:`subscribe`)."""
        return await self.request(self.send_channel, unsubscribe_message(filter, reply_channel, id),
                                  wait=wait, timeout=timeout)


class MqttConsumer(GatewayConsumer):
    """Routes ``mqtt.publish`` messages to ``@topic(...)`` methods by topic.

    Handlers take an :class:`MqttContext`. A message no route matches goes
    to :meth:`unmatched` (logs and counts it); an ``mqtt.undecodable`` one
    to :meth:`undecodable`; an ``mqtt.result`` (the outcome of a request
    that named this consumer's channel as reply_channel) to :meth:`result`.
    """

    context_class = MqttContext
    #: The gateway's outbound channel, for :meth:`publish` outside a handler.
    send_channel: ClassVar[str] = SEND_CHANNEL
    _routes: ClassVar[list[tuple[TopicRoute, str]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        routes: list[tuple[TopicRoute, str]] = []
        seen: set[str] = set()
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                for route in getattr(value, "_mqtt_routes", []):
                    routes = [(r, n) for r, n in routes if n != name or r.pattern != route.pattern]
                    routes.append((route, name))
                    seen.add(name)
        cls._routes = routes

    @classmethod
    def topic_filters(cls) -> list[str]:
        """The plain MQTT filters of the routes (to put in the gateway's subscriptions)."""
        return [route.filter for route, _ in cls._routes]

    async def mqtt_publish(self, mqtt: MqttContext) -> None:
        """Run the first route whose pattern matches the topic."""
        for route, name in self._routes:
            kwargs = route.match(mqtt.topic)
            if kwargs is None:
                continue
            mqtt.kwargs = kwargs
            handler = getattr(self, name)
            if asyncio.iscoroutinefunction(handler):
                await handler(mqtt)
            else:
                await database_sync_to_async(handler)(mqtt)
            return
        await self.unmatched(mqtt)

    async def mqtt_undecodable(self, mqtt: MqttContext) -> None:
        """A payload that did not decode; logs it by default (override to handle)."""
        await self.undecodable(mqtt)

    async def mqtt_result(self, mqtt: MqttContext) -> None:
        """The outcome of a request this consumer made with a reply_channel."""
        await self.result(mqtt)

    async def unmatched(self, mqtt: MqttContext) -> None:
        """No route matched; logged and counted (override to handle)."""
        self.stats["unmatched"] += 1
        logger.warning("%s: no route for topic %r", type(self).__name__, mqtt.topic)

    async def undecodable(self, mqtt: MqttContext) -> None:
        """Override to handle payloads that did not decode."""
        self.stats["undecodable"] += 1
        logger.warning("%s: undecodable payload on %r: %s", type(self).__name__, mqtt.topic, mqtt.error)

    async def result(self, mqtt: MqttContext) -> None:
        """Override to act on outcomes; failures are logged by default."""
        if not mqtt.ok:
            logger.warning("%s: %s failed: %s", type(self).__name__, mqtt.message.get("request"), mqtt.error)

    async def publish(self, topic: str, payload: bytes | str | None = b"", qos: int = 0, retain: bool = False,
                      properties: dict[str, Any] | None = None, reply_channel: str | None = None,
                      id: str | None = None, *, wait: bool = False,
                      timeout: float = DEFAULT_TIMEOUT) -> str | dict[str, Any] | None:
        """Ask the gateway to publish, outside a handler (returns as :meth:`MqttContext.publish`)."""
        return await request(self.send_channel,
                             publish_message(topic, payload, qos, retain, properties, reply_channel, id),
                             wait=wait, timeout=timeout, layer=self.channel_layer)

    async def subscribe(self, filter: str, qos: int = 1, channel: str | None = None, decode: str = "bytes",
                        reply_channel: str | None = None, id: str | None = None, *, wait: bool = False,
                        timeout: float = DEFAULT_TIMEOUT) -> str | dict[str, Any] | None:
        """Ask the gateway to subscribe at runtime, outside a handler (as :meth:`MqttContext.subscribe`)."""
        return await request(self.send_channel, subscribe_message(filter, qos, channel, decode, reply_channel, id),
                             wait=wait, timeout=timeout, layer=self.channel_layer)

    async def unsubscribe(self, filter: str, reply_channel: str | None = None, id: str | None = None, *,
                          wait: bool = False, timeout: float = DEFAULT_TIMEOUT) -> str | dict[str, Any] | None:
        """Ask the gateway to remove a runtime subscription, outside a handler."""
        return await request(self.send_channel, unsubscribe_message(filter, reply_channel, id),
                             wait=wait, timeout=timeout, layer=self.channel_layer)

