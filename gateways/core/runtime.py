"""What a gateway gets from the core: the :class:`Runtime`.

The layer side of a gateway: hand-offs to the layer (:meth:`Runtime.send`,
:meth:`Runtime.send_many`) with the layer's state and metrics kept as they
go, groups, reply channels, and the tracked tasks a daemon cancels on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from typing import Any, Callable, Coroutine, Iterator

from channels.exceptions import ChannelFull

from gateways.core.config import Config, GatewaySection
from gateways.core.deadletters import OUTBOUND, DeadLetterStore
from gateways.core.layer import build_layer
from gateways.core.metrics import Metrics
from gateways.core.specs import ProtocolSchema, load_schema

#: Errors that mean "the layer did not take the message".
LAYER_ERRORS: tuple[type[BaseException], ...] = (ChannelFull, OSError, ConnectionError, asyncio.TimeoutError)
try:  # redis-py's errors do not all derive from OSError
    from redis.exceptions import RedisError

    LAYER_ERRORS += (RedisError,)
except ImportError:  # pragma: no cover - redis is a dependency
    pass


def _dead_letter_store(config: Config) -> DeadLetterStore | None:
    """The dead-letter store of ``config``'s layer; None when it names no Redis."""
    try:
        return DeadLetterStore.from_config(config)
    except ValueError:
        return None


class HandoffError(Exception):
    """The layer refused or could not take a message.

    Args:
        reason: ``"full"`` (ChannelFull) or ``"unavailable"`` (layer down).
        detail: the underlying error, for logs.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"layer {reason}: {detail}")


class Runtime:
    """What a gateway gets from the core: the layer, metrics, logging and tasks.

    Args:
        config: the whole configuration.
        section: this protocol's section.
        protocol: the protocol name.
        layer: the channel layer (built from ``config.layer`` when omitted).
        schema: the protocol's schema (``protocol_specs/<protocol>.schema.json`` when omitted).
    """

    def __init__(self, config: Config, section: GatewaySection, protocol: str, layer: Any = None,
                 schema: ProtocolSchema | None = None) -> None:
        self.config = config
        self.section = section
        self.protocol = protocol
        self.layer = layer if layer is not None else build_layer(config.layer)
        #: Where messages that failed for good go; None without a Redis layer (memory://).
        self.dead_letters: DeadLetterStore | None = _dead_letter_store(config)
        self.metrics = Metrics()
        self.log = logging.getLogger(f"gateway.{protocol}")
        self.schema: ProtocolSchema = schema if schema is not None else load_schema(protocol)
        self.stopping = asyncio.Event()
        self.layer_ok = True
        self.strict = os.environ.get("GATEWAY_STRICT") == "1"
        #: Called when the layer answers again after failing (e.g. to re-add groups).
        self.on_layer_recovered: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task] = set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- hand-off to the layer -------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Hand ``message`` to the layer on ``channel``.

        Raises :class:`HandoffError` when the layer is full or unreachable;
        the caller answers its peer the protocol's way.
        """
        if self.strict:
            self.schema.validate(message)
        started = time.perf_counter()
        with self._handing_off([message]):
            try:
                await self.layer.send(channel, message)
            except ChannelFull as exc:
                self._count_refused([message], "full")
                raise HandoffError("full", f"channel {channel!r} is full") from exc
        self._count_taken([message], time.perf_counter() - started)

    async def send_many(self, channel: str, messages: list[dict[str, Any]]) -> int:
        """Hand ``messages`` to the layer on ``channel``, in order; how many it took.

        The layer took the first ``n`` returned, in this order, and refused
        every later one (full): send those again, in order, to keep it. With
        a layer that has ``send_many`` (the batched one) that is one round
        trip per ``send_batch`` messages; with another, the messages are sent
        one at a time. Either way sending stops at the first refusal. Raises
        :class:`HandoffError` when the layer took none of them.
        """
        bulk = getattr(self.layer, "send_many", None)
        if bulk is None or len(messages) <= 1:
            batches, hand = [[message] for message in messages], self._send_one
        else:
            limit = getattr(self.layer, "send_batch", len(messages))  # messages per round trip
            batches = [messages[start:start + limit] for start in range(0, len(messages), limit)]
            hand = functools.partial(self._send_batch, bulk)
        taken = 0
        for batch in batches:
            try:
                took = await hand(channel, batch)
            except HandoffError:
                if not taken:
                    raise
                break
            taken += took
            if took < len(batch):
                break
        return taken

    async def _send_one(self, channel: str, batch: list[dict[str, Any]]) -> int:
        await self.send(channel, batch[0])
        return 1

    async def _send_batch(self, bulk: Callable[..., Any], channel: str, batch: list[dict[str, Any]]) -> int:
        """One round trip of the batched layer; the messages it took (at least one)."""
        if self.strict:
            for message in batch:
                self.schema.validate(message)
        started = time.perf_counter()
        with self._handing_off(batch):
            taken = await bulk(channel, batch)
        self._count_taken(batch[:taken], time.perf_counter() - started)
        self._count_refused(batch[taken:], "full")
        if not taken:
            raise HandoffError("full", f"channel {channel!r} is full")
        return taken

    @contextlib.contextmanager
    def _handing_off(self, messages: list[dict[str, Any]]) -> Iterator[None]:
        """Track a hand-off in flight (for :meth:`handoffs_done`); a layer error
        becomes :class:`HandoffError` and marks the layer down."""
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        except LAYER_ERRORS as exc:
            self._count_refused(messages, "unavailable")
            self.layer_down(exc)
            raise HandoffError("unavailable", f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
        self.layer_up()

    def _count_taken(self, messages: list[dict[str, Any]], seconds: float) -> None:
        metrics = self.metrics
        for message in messages:
            metrics.observe("layer_send_seconds", seconds, "layer send latency")
            metrics.inc("messages_in_total", "messages handed to the layer", type=message.get("type", "?"))

    def _count_refused(self, messages: list[dict[str, Any]], reason: str) -> None:
        for message in messages:
            self.metrics.inc("handoff_failures_total", "messages the layer refused", reason=reason,
                             type=message.get("type", "?"))

    async def report(self, request: Any, result: dict[str, Any]) -> bool:
        """Send ``result`` (a delivery result: ``email.sent``, ``mqtt.result``...)
        to the ``reply_channel`` of the consumer's ``request``; whether it went.

        A request without a reply channel wants no result. A result the layer
        does not take is logged and counted, not raised: the request was
        carried out (or not) either way.
        """
        reply = request.get("reply_channel") if isinstance(request, dict) else None
        if not isinstance(reply, str) or not reply:
            return False
        try:
            await self.send(reply, result)
        except HandoffError as exc:
            self.metrics.inc("results_lost_total", "delivery results the layer did not take",
                             type=str(result.get("type", "?")))
            self.log.warning("could not report %s of %s to %s: %s", result.get("type"), result.get("id"), reply, exc)
            return False
        return True

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` on the layer."""
        await self.layer.group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group`` on the layer."""
        await self.layer.group_discard(group, channel)

    async def new_channel(self) -> str:
        """A new process-specific channel name (a reply channel)."""
        return await self.layer.new_channel()

    def layer_down(self, exc: BaseException) -> None:
        """Note that the layer failed (logged once per outage, /healthz turns 503)."""
        if self.layer_ok:
            self.log.warning("channel layer unavailable: %s: %s", type(exc).__name__, exc)
        self.layer_ok = False

    def layer_up(self) -> None:
        """Note that the layer answered; after an outage, run ``on_layer_recovered``."""
        if not self.layer_ok:
            self.log.info("channel layer available again")
            self.layer_ok = True
            for callback in self.on_layer_recovered:
                callback()

    async def handoffs_done(self) -> None:
        """Wait until no :meth:`send` is in flight."""
        await self._idle.wait()

    # -- dead letters --------------------------------------------------------

    async def dead_letter(self, channel: str, message: dict[str, Any], error: str, attempts: int,
                          first_failure: float, last_failure: float | None = None,
                          direction: str = OUTBOUND) -> str | None:
        """Keep a consumer's message that failed for good in the dead letters;
        return the entry's id.

        Call it in addition to the failure result the spec sends back. Never
        raises: when the store cannot take the entry (its Redis is down), an
        ERROR names the message and None is returned; the gateway goes on.

        Args:
            channel: the channel the consumer sent the message on (a retry
                re-sends it there).
            message: the consumer's message.
            error: what failed (see :func:`gateways.core.deadletters.describe_error`).
            attempts: how many times it was tried.
            first_failure: unix time of the first failed attempt.
            last_failure: unix time of the last one; now when omitted.
            direction: ``outbound`` (a protocol action) or ``inbound``.
        """
        mid = message.get("id") if isinstance(message, dict) else None
        mtype = message.get("type", "?") if isinstance(message, dict) else "?"
        if self.dead_letters is None:
            self.log.error("%s %s failed for good and is not kept: no dead-letter store (layer.url names no "
                           "Redis): %s", mtype, mid, error.splitlines()[0] if error else "")
            return None
        try:
            entry_id = await self.dead_letters.add(
                protocol=self.protocol, channel=channel, message=message, error=error, attempts=attempts,
                first_failure=first_failure, last_failure=time.time() if last_failure is None else last_failure,
                direction=direction)
        except Exception as exc:  # noqa: BLE001 - the store's Redis down: log, never crash the gateway
            self.log.error("%s %s failed for good and could not be dead-lettered (%s: %s): %s", mtype, mid,
                           type(exc).__name__, exc, error.splitlines()[0] if error else "")
            return None
        self.metrics.inc("dead_lettered_total", "messages that failed for good and were dead-lettered",
                         direction=direction)
        self.log.warning("%s %s failed for good after %d attempt(s); dead letter %s", mtype, mid, attempts, entry_id)
        return entry_id

    # -- tasks -------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Run ``coro`` as a tracked task; an exception is logged, not lost."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        """Cancel every tracked task and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def log_invalid(self, channel: str, message: Any, problem: str) -> None:
        """Log and count a consumer message that is invalid (the core does, once per message)."""
        mtype = message.get("type", "?") if isinstance(message, dict) else "?"
        self.metrics.inc("invalid_messages_total", "consumer messages rejected", type=str(mtype))
        self.log.error("invalid message on %s: %s", channel, problem)
