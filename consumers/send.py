"""Send to the gateways from ordinary Django code: views, management commands, Celery tasks.

Each helper comes in two forms, ``async_<name>`` for async code and
``<name>`` for sync code (it must not be called from a running event loop:
use the async form there)::

    from consumers.send import slack_send, mqtt_publish, websocket_group_send

    slack_send("post", channel="C123", text="deployed")              # -> the message id
    result = slack_send("post", channel="C123", text="deployed", wait=True, timeout=5.0)
    result["ok"], result["response"]["ts"]                             # the slack.result

    await async_mqtt_publish("devices/42/cmd", b"reboot", qos=1, wait=True)  # -> the mqtt.result

Without ``wait`` a helper returns the ``id`` of the message it handed to the
channel layer. With ``wait=True`` it also asks the gateway for the outcome:
the message carries a ``reply_channel`` made for it (``new_channel()``) and
the helper returns the result message with the same ``id`` (``email.sent``
or ``email.failed``, ``slack.result``, ``mqtt.result``), or raises
:class:`TimeoutError` when none came within ``timeout`` seconds (the message
may still be delivered later). WebSocket broadcasts have no result.

Messages go to the gateway's send channel as the YAML named by the
``GATEWAY_CONFIG`` setting configures it (``email.send_channel``,
``slack.send_channel``, ``mqtt.send_channel``; the defaults without
one), on the project's default channel layer. Each is checked against its
protocol's schema first, so a mistake raises
:class:`~gateways.core.specs.InvalidMessage` here instead of being logged by
the gateway.

Consumers use the same mechanism through their contexts
(:meth:`consumers.base.MessageContext.request`): ``await ctx.say("hi",
wait=True)``.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any, Awaitable, Callable, ParamSpec, TypeVar

from asgiref.sync import async_to_sync

from gateways.core.specs import load_schema
from protocol_specs.mqtt import publish_message

#: Seconds a helper waits for a delivery result by default.
DEFAULT_TIMEOUT = 5.0

#: The gateways' send channels when the YAML does not name others.
DEFAULT_CHANNELS = {"email": "email.send", "slack": "slack.send", "mqtt": "mqtt.send"}

Result = dict[str, Any]
P = ParamSpec("P")
T = TypeVar("T")


@functools.lru_cache(maxsize=8)
def _channels_of(path: str) -> dict[str, str]:
    from gateways.core.config import load_config

    config = load_config(path)
    channels = dict(DEFAULT_CHANNELS)
    for protocol in channels:
        section = config.sections.get(protocol)
        if section is not None:
            channels[protocol] = section.send_channel
    return channels


def send_channel(protocol: str) -> str:
    """The channel consumers send to ``protocol``'s gateway (``email``, ``slack``, ``mqtt``).

    Read from the YAML of the ``GATEWAY_CONFIG`` setting (once per file);
    the protocol's default (``email.send``...) without the setting or the section.
    """
    from django.conf import settings

    path = getattr(settings, "GATEWAY_CONFIG", None)
    if not path:
        return DEFAULT_CHANNELS[protocol]
    return _channels_of(str(path))[protocol]


def _layer(layer: Any) -> Any:
    if layer is not None:
        return layer
    from channels.layers import get_channel_layer

    found = get_channel_layer()
    if found is None:
        raise RuntimeError("no channel layer: set CHANNEL_LAYERS (channel_layers_setting(GATEWAY_CONFIG))")
    return found


async def request(channel: str, message: dict[str, Any], *, wait: bool = False,
                  timeout: float = DEFAULT_TIMEOUT, layer: Any = None) -> str | Result | None:
    """Send ``message`` on ``channel``; return its ``id``, or with ``wait`` its result.

    The one mechanism behind every helper here and the consumers' contexts.
    With ``wait``, ``message`` gets an ``id`` when it has none and a fresh
    ``reply_channel`` of this process (replacing one it named), and the first
    message arriving there with the same ``id`` is returned. Without, it goes
    as it is and its ``id`` is returned (None when it has none: the helpers
    here always give one; the contexts only when asked, so that tests can
    compare what a consumer sent with a literal).

    Args:
        channel: where the gateway listens (its outbound or a reply channel).
        message: the message; with ``wait`` it is updated in place (``id``, ``reply_channel``).
        wait: wait for the gateway's result message.
        timeout: seconds to wait for it.
        layer: the channel layer (default: the project's default layer).

    Raises:
        TimeoutError: ``wait`` and no result within ``timeout`` seconds.
    """
    layer = _layer(layer)
    if not wait:
        await layer.send(channel, message)
        return message.get("id")
    message_id = message.setdefault("id", uuid.uuid4().hex)
    reply_channel = await layer.new_channel()
    message["reply_channel"] = reply_channel
    await layer.send(channel, message)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            result = await asyncio.wait_for(layer.receive(reply_channel), remaining)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no result for {message.get('type')} {message_id} on {channel} "
                               f"within {timeout}s (it may still be delivered)") from None
        if result.get("id") == message_id:
            return result


def _validated(protocol: str, message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with an ``id`` (the helpers always return one), checked against the schema."""
    message.setdefault("id", uuid.uuid4().hex)
    load_schema(protocol).validate(message)
    return message


def _sync(function: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """The sync form of an ``async_*`` helper, documented like it."""
    sync = async_to_sync(function)

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return sync(*args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = function.__name__.removeprefix("async_")
    wrapper.__doc__ = f"The sync form of :func:`{function.__name__}` (same arguments and return value)."
    return wrapper


# --------------------------------------------------------------------------
# Email.


async def async_email_send(*, sender: str, to: str | list[str] | None = None, subject: str = "",
                           text: str | None = None, wait: bool = False, timeout: float = DEFAULT_TIMEOUT,
                           layer: Any = None, **fields: Any) -> str | Result:
    """Ask the email gateway to send a message (``email.send``, protocol_specs/email.md).

    For Django's ``send_mail()`` and ``EmailMessage`` use the email backend
    :class:`consumers.mail.GatewayEmailBackend` instead.

    Args:
        sender: the From (``"Name <addr>"`` or ``addr``); an allowed sender of the gateway.
        to: recipients.
        subject: the subject.
        text: the plain-text body.
        wait: return the ``email.sent`` or ``email.failed`` instead of the id.
        timeout: seconds to wait for it (relay retries may take longer).
        layer: the channel layer (default: the project's).
        **fields: more ``email.send`` keys: ``cc``, ``bcc``, ``html``, ``attachments``,
            ``headers``, ``in_reply_to``, ``references``, ``envelope_from``, ``raw``...
    """
    message = {"type": "email.send", "from": sender, "to": to or [], "subject": subject, "text": text, **fields}
    return await request(send_channel("email"), _validated("email", message), wait=wait,
                         timeout=timeout, layer=layer)


# --------------------------------------------------------------------------
# Slack.


async def async_slack_send(action: str, *, wait: bool = False, timeout: float = DEFAULT_TIMEOUT,
                           layer: Any = None, **fields: Any) -> str | Result:
    """Ask the Slack gateway to make a Web API call (``slack.send``, protocol_specs/slack.md).

    Args:
        action: ``post``, ``ephemeral``, ``update``, ``delete``, ``react``, ``unreact``,
            ``respond`` or ``call``.
        wait: return the ``slack.result`` (``ok``, ``error``, Slack's ``response``) instead of the id.
        timeout: seconds to wait for it.
        layer: the channel layer (default: the project's).
        **fields: the action's keys: ``channel``, ``text``, ``blocks``, ``thread_ts``, ``ts``,
            ``name``, ``user``, ``method``, ``params``...; None values are left out.
    """
    message = {"type": "slack.send", "action": action, **{k: v for k, v in fields.items() if v is not None}}
    return await request(send_channel("slack"), _validated("slack", message), wait=wait,
                         timeout=timeout, layer=layer)


# --------------------------------------------------------------------------
# MQTT.


async def async_mqtt_publish(topic: str, payload: bytes | str | None = b"", qos: int = 0, retain: bool = False,
                             properties: dict[str, Any] | None = None, *, wait: bool = False,
                             timeout: float = DEFAULT_TIMEOUT, layer: Any = None) -> str | Result:
    """Ask the MQTT gateway to publish (``mqtt.publish`` on ``mqtt.send``, protocol_specs/mqtt.md).

    Args:
        topic: the topic name.
        payload: bytes, or str (sent as UTF-8).
        qos: 0, 1 or 2.
        retain: the retain flag.
        properties: MQTT 5 properties.
        wait: return the ``mqtt.result`` instead of the id (``ok`` once the broker
            confirmed it: PUBACK at QoS 1, PUBCOMP at QoS 2, written at QoS 0).
        timeout: seconds to wait for it.
        layer: the channel layer (default: the project's).
    """
    message = publish_message(topic, payload, qos, retain, properties)
    return await request(send_channel("mqtt"), _validated("mqtt", message), wait=wait,
                         timeout=timeout, layer=layer)


# --------------------------------------------------------------------------
# WebSocket.


async def async_websocket_group_send(group: str, text: str | None = None, bytes: bytes | None = None, *,
                                     layer: Any = None) -> None:
    """Send a text or binary message to every WebSocket connection in ``group``.

    Connections join groups with ``websocket.group_add`` (a consumer's
    ``ws.group_add(group)``). There is no delivery result: ``websocket.send``
    has no ``id`` and the gateways answer nothing, so this returns None once
    the layer took the message.

    Args:
        group: the group name.
        text: a text message, or
        bytes: a binary one (exactly one of the two).
        layer: the channel layer (default: the project's).
    """
    if (text is None) == (bytes is None):
        raise ValueError("give exactly one of text and bytes")
    message = {"type": "websocket.send", "text": text} if text is not None else {"type": "websocket.send",
                                                                                   "bytes": bytes}
    load_schema("websocket").validate(message)
    await _layer(layer).group_send(group, message)


email_send = _sync(async_email_send)
slack_send = _sync(async_slack_send)
mqtt_publish = _sync(async_mqtt_publish)
websocket_group_send = _sync(async_websocket_group_send)
