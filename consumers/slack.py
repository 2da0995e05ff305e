"""Django side of the Slack gateway: a base consumer and routing (tested with consumers.testing).

Subclass :class:`SlackConsumer` and define any of ``on_message``,
``on_mention``, ``on_join``, ``on_leave``, ``on_reaction``, ``on_command``,
``on_action``, ``on_view_submission``, ``on_options``, ``on_event``; each
takes a :class:`SlackContext`. Or route by event type, Slack channel and
text pattern with :func:`on`::

    class Bot(SlackConsumer):
        @on("slack.message", text=r"^deploy (?P<target>\\w+)")
        async def deploy(self, ctx):
            await ctx.reply_in_thread(f"deploying {ctx.match['target']}")

Commands, view submissions and options requests wait (up to the gateway's
``ack_timeout``) for :meth:`SlackContext.ack`; when a handler returns without
calling it the base class acks empty at once, so Slack never waits for nothing.

The message format is ``protocol_specs/slack.md``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Callable

from channels.db import database_sync_to_async

from consumers.base import GatewayConsumer, MessageContext
from consumers.send import DEFAULT_TIMEOUT

#: Message type -> the handler method the base class calls.
HANDLERS = {
    "slack.message": "on_message",
    "slack.app_mention": "on_mention",
    "slack.join": "on_join",
    "slack.leave": "on_leave",
    "slack.reaction_added": "on_reaction",
    "slack.reaction_removed": "on_reaction",
    "slack.command": "on_command",
    "slack.action": "on_action",
    "slack.view_submission": "on_view_submission",
    "slack.options": "on_options",
    "slack.event": "on_event",
}


class SlackContext(MessageContext):
    """One Slack message and the ways to answer it.

    Args:
        consumer: the consumer handling it.
        message: the ``slack.*`` message.
    """

    def __init__(self, consumer: "GatewayConsumer", message: dict[str, Any]) -> None:
        super().__init__(consumer, message)
        self.acked = False
        self.match: re.Match[str] | None = None

    # Keys every inbound message has, as attributes.
    @property
    def channel(self) -> str | None:
        """The Slack channel id."""
        return self.message.get("channel")

    @property
    def user(self) -> str | None:
        """The Slack user id of whoever caused the event."""
        return self.message.get("user")

    @property
    def text(self) -> str | None:
        """The message's (or command's) text."""
        return self.message.get("text")

    @property
    def ts(self) -> str | None:
        """The timestamp of the message the event is about."""
        return self.message.get("ts")

    @property
    def thread_ts(self) -> str | None:
        """The thread the message is in, if any."""
        return self.message.get("thread_ts")

    async def send(self, action: str, *, wait: bool = False, timeout: float = DEFAULT_TIMEOUT,
                   **fields: Any) -> str | dict[str, Any] | None:
        """Send a ``slack.send`` of ``action`` to the gateway (see the spec for the keys).

        Returns the message's ``id`` (the ``id`` you passed, else None); with
        ``wait``, the ``slack.result`` the gateway answers (``ok``, ``error``,
        Slack's ``response``), or raises ``TimeoutError`` after ``timeout``
        seconds. The helpers below take ``wait`` and ``timeout`` too and
        return the same.
        """
        message = {"type": "slack.send", "action": action}
        message.update({k: v for k, v in fields.items() if v is not None})
        return await self.request(self.reply_channel or "slack.send", message, wait=wait, timeout=timeout)

    async def say(self, text: str | None = None, blocks: list[dict[str, Any]] | None = None,
                  channel: str | None = None, **fields: Any) -> str | dict[str, Any] | None:
        """Post in the message's channel (or ``channel``).

        Args:
            text: the text.
            blocks: Block Kit blocks.
            channel: another channel id.
            **fields: more ``slack.send`` keys (``thread_ts``, ``reply_channel``, ``id``, ``params``),
                and ``wait``/``timeout`` (see :meth:`send`).
        """
        return await self.send("post", channel=channel or self.channel, text=text, blocks=blocks, **fields)

    async def reply_in_thread(self, text: str | None = None, blocks: list[dict[str, Any]] | None = None,
                              broadcast: bool = False, **fields: Any) -> str | dict[str, Any] | None:
        """Post in the thread of the message (starting one on it when it has none)."""
        return await self.say(text, blocks, thread_ts=self.thread_ts or self.ts,
                              reply_broadcast=broadcast or None, **fields)

    async def react(self, name: str, **fields: Any) -> str | dict[str, Any] | None:
        """Add reaction ``name`` (``thumbsup``) to the message."""
        return await self.send("react", channel=self.channel, ts=self.ts, name=name, **fields)

    async def ephemeral(self, text: str, user: str | None = None, **fields: Any) -> str | dict[str, Any] | None:
        """Post a message only ``user`` (default: the message's user) sees."""
        return await self.send("ephemeral", channel=self.channel, user=user or self.user, text=text, **fields)

    async def respond(self, text: str | None = None, blocks: list[dict[str, Any]] | None = None,
                      **fields: Any) -> str | dict[str, Any] | None:
        """Answer through the command's or action's ``response_url``."""
        return await self.send("respond", response_url=self.message.get("response_url"), text=text,
                               blocks=blocks, **fields)

    async def ack(self, payload: dict[str, Any] | None = None) -> None:
        """Acknowledge a command, view submission or options request, with ``payload``
        as Slack's ack body (``{"text": ...}``, ``{"response_action": "errors", ...}``,
        ``{"options": [...]}``). Once per message; later calls do nothing."""
        ack_channel = self.message.get("ack_channel")
        if self.acked or not ack_channel:
            return
        self.acked = True
        await self.send_to(ack_channel, {"type": "slack.ack", "payload": payload})


def on(*types: str, channel: str | list[str] | None = None, text: str | None = None,
       command: str | None = None) -> Callable[[Callable], Callable]:
    """Route matching messages to the decorated method ``(self, ctx)``.

    Args:
        *types: message types (``slack.message``...); none means any.
        channel: Slack channel id(s).
        text: a regular expression searched in the text; ``ctx.match`` holds the match.
        command: a slash command such as ``/deploy``.
    """
    route = SlackRoute(frozenset(types), frozenset([channel] if isinstance(channel, str) else channel or []),
                       re.compile(text) if text is not None else None, command)

    def decorate(method: Callable) -> Callable:
        method.__dict__.setdefault("_slack_routes", []).append(route)
        return method

    return decorate


@dataclass(frozen=True)
class SlackRoute:
    """One route of a consumer: conditions on the type, channel, text, command."""

    types: frozenset[str]
    channels: frozenset[str]
    text: re.Pattern[str] | None
    command: str | None

    def match(self, message: dict[str, Any]) -> re.Match[str] | bool:
        """A truthy value (the text match, when there is a pattern) if ``message`` matches."""
        if self.types and message.get("type") not in self.types:
            return False
        if self.channels and message.get("channel") not in self.channels:
            return False
        if self.command is not None and message.get("command") != self.command:
            return False
        if self.text is not None:
            text = message.get("text")
            found = self.text.search(text) if isinstance(text, str) else None
            return found or False
        return True


class SlackConsumer(GatewayConsumer):
    """Base consumer for ``slack.*`` messages.

    Routes declared with :func:`on` are tried first, in definition order; then
    the ``on_<kind>`` handler of the type. Handlers may be ``async def`` or
    plain ``def`` (run in a thread with database access), and take the context.
    """

    context_class = SlackContext
    routes: list[tuple[SlackRoute, str]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        routes: list[tuple[SlackRoute, str]] = []
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                for route in getattr(value, "_slack_routes", []):
                    routes.append((route, name))
        cls.routes = routes

    async def _dispatch_slack(self, context: SlackContext) -> None:
        handler = None
        for route, name in self.routes:
            found = route.match(context.message)
            if found:
                context.match = found if isinstance(found, re.Match) else None
                handler = getattr(self, name)
                break
        if handler is None:
            handler = getattr(self, HANDLERS[context.type], None)
        if handler is None:
            return
        if asyncio.iscoroutinefunction(handler):
            await handler(context)
        else:
            await database_sync_to_async(handler)(context)

    async def handler_done(self, context: MessageContext) -> None:
        await _ack_if_waiting(context)

    async def handler_failed(self, context: MessageContext) -> None:
        await _ack_if_waiting(context)


# Every slack.* type reaches _dispatch_slack through the stock handler name
# (slack.message -> slack_message); a subclass may still define its own.
for _mtype in HANDLERS:
    setattr(SlackConsumer, _mtype.replace(".", "_"), SlackConsumer._dispatch_slack)


async def _ack_if_waiting(context: MessageContext) -> None:
    if isinstance(context, SlackContext) and not context.acked and context.message.get("ack_channel"):
        await context.ack(None)

