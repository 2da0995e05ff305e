"""``gateway slack``: Socket Mode and the Events API in, Web API calls out.

Inbound: each delivery is translated (:mod:`gateways.slack.protocol`), routed,
checked against the shared dedup store, handed to the layer and only then
acked; deliveries of one Slack channel are handed off one after another in
arrival order. Commands, view submissions and options requests also wait up
to ``ack_timeout`` for the consumer's ``slack.ack`` on their ``ack_channel``.

Outbound: ``slack.send`` on ``slack.send_channel`` (or on any reply
channel of this process) becomes a Web API call; its ``slack.result`` goes to
the message's ``reply_channel`` when it names one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from gateways.core.backoff import Backoff
from gateways.core.config import Config, split_host_port
from gateways.core.gateway import Gateway, InvalidMessage, Service, StackUnavailable
from gateways.core.runtime import HandoffError, Runtime
from gateways.slack import protocol
from gateways.slack.config import SlackSection
from gateways.slack.dedup import Dedup, MemoryDedup, RedisDedup
from gateways.slack.events_http import EventsListener
from gateways.slack.protocol import Identity, Ignored, Inbound
from gateways.slack.socket_mode import SocketModeLink
from gateways.slack.webapi import WebApi

#: (ack, payload) — whether to acknowledge a delivery, and with what.
Answer = tuple[bool, dict[str, Any] | None]

#: Longest a Web API call waits for deliveries being handed off (seconds).
OUTBOUND_YIELD = 0.05


class Serializer:
    """Runs work for one key at a time, in the order :meth:`enter` was called.

    :meth:`enter` is synchronous so a caller takes its place before its first
    ``await``: tasks started in arrival order keep that order. A place left
    early (cancelled, or with nothing to do) passes its turn on only once its
    predecessor is done.
    """

    def __init__(self) -> None:
        self._tails: dict[Any, asyncio.Future] = {}

    def enter(self, key: Any) -> tuple[asyncio.Future | None, asyncio.Future]:
        """Take the next place for ``key``; returns (predecessor, own place)."""
        mine = asyncio.get_running_loop().create_future()
        previous = self._tails.get(key)
        self._tails[key] = mine
        return previous, mine

    @staticmethod
    async def wait(previous: asyncio.Future | None) -> None:
        """Wait until the predecessor left (``asyncio.wait`` never cancels it)."""
        if previous is not None and not previous.done():
            await asyncio.wait({previous})

    def leave(self, key: Any, mine: asyncio.Future, previous: asyncio.Future | None = None) -> None:
        """Give the place to the next one (after ``previous``, if it is still running)."""
        if mine.done():
            return
        if previous is not None and not previous.done():
            previous.add_done_callback(lambda _f: self.leave(key, mine))
            return
        mine.set_result(None)
        if self._tails.get(key) is mine:
            del self._tails[key]


class SlackGateway(Gateway, protocol="slack", section_class=SlackSection):
    """The Slack daemon (its arguments are :class:`Gateway`'s)."""

    def __init__(self, runtime: Runtime, section: SlackSection) -> None:
        super().__init__(runtime, section)
        self.section: SlackSection = section
        self.rules = protocol.compile_rules(section.routes)
        self.identity: Identity | None = None
        self.webapi: WebApi | None = None
        self.dedup: Dedup | None = None
        self.link: SocketModeLink | None = None
        self.listener: EventsListener | None = None
        self.inbound_order = Serializer()
        self.outbound_order = Serializer()
        self.acks: dict[str, asyncio.Future] = {}
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._handing_off = 0  # deliveries not yet handed off (their acks wait for it)
        self._handed_off = asyncio.Event()
        self._handed_off.set()

    # -- what `gateway up` asks ------------------------------------------

    @classmethod
    def consumer_channels(cls, section: SlackSection) -> list[str]:
        from protocol_specs.slack import consumer_channels

        return consumer_channels(section)

    @classmethod
    def conversation_key(cls, message: dict[str, Any]) -> Any:
        """One Slack channel of one workspace (the spec's ordering unit); None
        for messages without a channel, which keep no order."""
        from protocol_specs.slack import conversation_key

        return conversation_key(message)

    @classmethod
    def stack_services(cls, section: SlackSection, config: Config) -> list[Service]:
        missing = section.missing()
        if missing:
            raise StackUnavailable(
                f"Slack skipped: {missing}; to add it, export SLACK_APP_TOKEN=xapp-... "
                "SLACK_BOT_TOKEN=xoxb-... (see docs/slack.md)"
            )
        return []

    def uses_process_channel(self) -> bool:
        return True  # slack.ack arrives on per-delivery ack channels of this process

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        section = self.section
        missing = section.missing()
        if missing:
            raise SystemExit(f"gateway slack: {missing}")
        metrics = self.runtime.metrics
        self.webapi = WebApi(section.api_url, section.bot_token, section.api_timeout, section.api_retries,
                             section.max_retry_after, metrics)
        self.dedup = self._dedup_store()
        if section.listen:
            self.listener = EventsListener(section.events_path, section.signing_secret, section.signature_window,
                                           self.deliver, lambda: self.identity, metrics)
            await self.listener.start(*split_host_port(section.listen))
        self.runtime.spawn(self._connect(), "slack connect")

    def _dedup_store(self) -> Dedup:
        url = self.section.dedup_url or self.runtime.config.layer.url or ""
        if urlsplit(url).scheme in ("redis", "rediss", "unix"):
            return RedisDedup(url, self.runtime.config.layer.prefix, self.section.dedup_ttl)
        self.log.warning("dedup store is in this process only (layer %s is not Redis): run one instance", url)
        return MemoryDedup(self.section.dedup_ttl)

    async def _connect(self) -> None:
        """Learn who the bot is (so its own messages are ignored), then open Socket Mode."""
        assert self.webapi is not None
        backoff = Backoff(initial=0.5, maximum=30.0)
        while True:
            result = await self.webapi.call("auth.test")
            if result.ok and result.body:
                self.identity = Identity.from_auth_test(result.body)
                break
            delay = backoff.next_delay()
            self.log.error("auth.test failed: %s; retrying in %.1fs (check slack.bot_token and slack.api_url)",
                           result.error, delay)
            await asyncio.sleep(delay)
        self.log.info("bot is user %s, bot %s, team %s", self.identity.user_id, self.identity.bot_id,
                      self.identity.team_id)
        if self.section.socket_mode:
            self.link = SocketModeLink(self.webapi, self.section.app_token, self.on_envelope,
                                       self.section.ping_interval, self.runtime.metrics)
            await self.link.start()

    async def stop_accepting(self) -> None:
        if self.link is not None:
            self.link.accepting = False
        if self.listener is not None:
            self.listener.accepting = False

    async def drain(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()
        if self.listener is not None:
            await self.listener.close()
        for future in self.acks.values():
            future.cancel()
        if self.webapi is not None:
            await self.webapi.close()
        if self.dedup is not None:
            await self.dedup.close()

    def health(self) -> tuple[bool, dict[str, Any]]:
        connected = self.link.connected if self.link is not None else None
        ok = self.identity is not None and (not self.section.socket_mode or bool(connected))
        return ok, {"identity": self.identity is not None, "socket_mode_connected": connected}

    # -- inbound -------------------------------------------------------------

    async def on_envelope(self, envelope: dict[str, Any]) -> Answer:
        """Answer one Socket Mode envelope (called by the link)."""
        metrics = self.runtime.metrics
        metrics.inc("slack_envelopes_total", "Socket Mode envelopes received", kind=str(envelope.get("type")))
        deadline = time.monotonic() + 2.8
        translated = protocol.translate_envelope(envelope, self.identity)
        if isinstance(translated, Ignored):
            metrics.inc("slack_ignored_total", "deliveries producing no message", reason=translated.reason)
            self.log.debug("ignored envelope %s: %s", envelope.get("envelope_id"), translated.reason)
            return True, None
        return await self.deliver(translated, deadline)

    async def deliver(self, inbound: Inbound, deadline: float) -> Answer:
        """Route, deduplicate and hand off ``inbound``; return the ack to give Slack.

        Args:
            inbound: the translated delivery.
            deadline: monotonic time by which Slack must have its ack.
        """
        # Take the ordering place before the first await (see Serializer); only
        # the layer send waits for it, the dedup round trips run alongside.
        key = inbound.order_key
        previous, mine = self.inbound_order.enter(key) if key else (None, None)

        def leave() -> None:
            if mine is not None:
                self.inbound_order.leave(key, mine, previous)

        self._inflight += 1
        self._idle.clear()
        self._handing_off += 1
        self._handed_off.clear()
        try:
            try:
                handed = await self._hand_off(inbound, previous, leave)
            finally:
                leave()
                self._handing_off -= 1
                if not self._handing_off:
                    self._handed_off.set()
            if handed is None or not inbound.wants_ack_payload:
                return handed is not None, None
            return True, await self._ack_payload(handed, deadline)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _hand_off(self, inbound: Inbound, previous: asyncio.Future | None,
                        leave: Callable[[], Any]) -> str | None:
        """Send the message to its channel once ``previous`` left, then ``leave``
        the ordering place; return the ack channel ('' when none), or None when
        it must not be acked."""
        runtime, metrics = self.runtime, self.runtime.metrics
        message = dict(inbound.message)
        message["reply_channel"] = self.section.send_channel
        ack_channel = ""
        if inbound.wants_ack_payload:
            ack_channel = await runtime.new_channel()
            message["ack_channel"] = ack_channel
        channel = protocol.route(message, self.rules, self.section.default_channel)
        if channel is None:
            metrics.inc("slack_unroutable_total", "messages no route matched", type=message["type"])
            self.log.warning("no route for %s %s in %s; acked and dropped", message["type"], message["id"],
                             message.get("channel"))
            return ""
        event_id = inbound.dedup_key
        if event_id is not None:
            assert self.dedup is not None
            claim = await self.dedup.claim(event_id)
            if claim == "done":
                metrics.inc("slack_duplicates_total", "retried events already delivered")
                self.log.info("event %s (retry %s) already delivered; acked", event_id, message["retry_attempt"])
                return ""
            if claim == "busy":
                metrics.inc("slack_duplicates_total", "retried events already delivered")
                self.log.info("event %s is being handed off by another instance; not acked", event_id)
                return None
        if ack_channel:
            self.acks[ack_channel] = asyncio.get_running_loop().create_future()
        await self.inbound_order.wait(previous)
        try:
            await runtime.send(channel, message)
        except HandoffError as exc:
            leave()
            self.acks.pop(ack_channel, None)
            if event_id is not None:
                await self.dedup.release(event_id)  # type: ignore[union-attr]
            self.log.error("%s %s not handed off (%s); not acked, Slack will retry", message["type"],
                           message["id"], exc)
            return None
        leave()
        if event_id is not None:
            # Recorded beside the ack rather than before it: until it lands the id
            # stays claimed, so a retry meanwhile is left for later, never re-delivered.
            self.runtime.spawn(self.dedup.done(event_id), "slack dedup done")  # type: ignore[union-attr]
        return ack_channel

    async def _ack_payload(self, ack_channel: str, deadline: float) -> dict[str, Any] | None:
        future = self.acks.get(ack_channel)
        if future is None:
            return None
        timeout = max(0.0, min(self.section.ack_timeout, deadline - time.monotonic()))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            self.runtime.metrics.inc("slack_ack_timeouts_total", "consumer acks that came too late")
            self.log.warning("no slack.ack on %s within %.1fs; acked empty", ack_channel, timeout)
            return None
        finally:
            self.acks.pop(ack_channel, None)

    # -- outbound --------------------------------------------------------------

    async def handle(self, channel: str, message: dict[str, Any]) -> None:
        mtype = message["type"]
        if mtype == "slack.ack":
            await self._consumer_ack(channel, message)
            return
        if mtype != "slack.send":
            raise InvalidMessage(f"{mtype} is sent by the gateway, not to it")
        # Calls for one Slack channel go out in the order they arrived.
        key = message.get("channel") or message.get("response_url") or None
        previous, mine = self.outbound_order.enter(key) if key else (None, None)
        try:
            await self.outbound_order.wait(previous)
            await self._after_handoffs()
            await self._send(message)
        finally:
            if mine is not None:
                self.outbound_order.leave(key, mine, previous)

    async def _after_handoffs(self) -> None:
        """Let deliveries being handed off go first, for at most ``OUTBOUND_YIELD``:
        their acks are due within Slack's 3 s and a Web API call is not, so in a
        burst the acks do not queue behind the posts the burst itself causes."""
        if self._handed_off.is_set():
            return
        try:
            await asyncio.wait_for(self._handed_off.wait(), OUTBOUND_YIELD)
        except asyncio.TimeoutError:
            pass

    async def _consumer_ack(self, channel: str, message: dict[str, Any]) -> None:
        future = self.acks.get(channel)
        if future is None or future.done():
            self.runtime.metrics.inc("slack_late_acks_total", "slack.ack for no waiting delivery")
            self.log.warning("slack.ack on %s: no delivery is waiting for it (late, repeated, or not an "
                             "ack_channel)", channel)
            return
        future.set_result(message.get("payload"))

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.webapi is not None
        call = protocol.build_call(message)  # InvalidMessage: the core answers it
        if call.url is not None:
            result = await self.webapi.post_response_url(call.url, call.params)
        else:
            result = await self.webapi.call(call.method, call.params)
        if not result.ok:
            self.log.error("%s (%s) failed: %s", call.method, message["action"], result.error)
        await self.runtime.report(message, protocol.result_message(message, result.ok, result.body, result.error))

    def failure_result(self, message: dict[str, Any], problem: str) -> dict[str, Any] | None:
        """``slack.result`` with ``ok`` false for an invalid ``slack.send``; a
        ``slack.ack`` has no result."""
        if message.get("type") != "slack.send":
            return None
        return protocol.result_message(message, False, None, f"invalid_message: {problem}")
