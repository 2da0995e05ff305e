"""The daemon lifecycle every gateway shares.

:func:`run_gateway` builds the layer, starts the protocol's :class:`Gateway`,
the outbound listener and the health endpoint, and on SIGTERM/SIGINT drains:
stop accepting, let hand-offs in flight finish within ``grace_period``, close
connections the protocol's way, close the layer, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Coroutine

from channels.exceptions import ChannelFull

from gateways.core import eventloop
from gateways.core.backoff import Backoff
from gateways.core.config import Config, GatewaySection, split_host_port
from gateways.core.health import HealthServer
from gateways.core.layer import build_layer, close_layer
from gateways.core.metrics import Metrics
from gateways.core.specs import InvalidMessage, ProtocolSchema, load_schema

#: Errors that mean "the layer did not take the message".
LAYER_ERRORS: tuple[type[BaseException], ...] = (ChannelFull, OSError, ConnectionError, asyncio.TimeoutError)
try:  # redis-py's errors do not all derive from OSError
    from redis.exceptions import RedisError

    LAYER_ERRORS += (RedisError,)
except ImportError:  # pragma: no cover - redis is a dependency
    pass


#: Seconds between layer probes while the layer is reachable, and while it is not.
LAYER_PROBE_INTERVAL = 5.0
LAYER_PROBE_RETRY = 1.0
#: Seconds a probe may take before the layer counts as unreachable.
LAYER_PROBE_TIMEOUT = 5.0
#: Seconds closing may take after the grace period (connections, tasks, the layer).
CLOSE_TIMEOUT = 5.0
#: Seconds each clean-up step after closing gets at least (three steps: below EXIT_MARGIN).
CLEANUP_MINIMUM = 0.5
#: Seconds more before the exit watchdog ends a process that did not exit by itself.
EXIT_MARGIN = 3.0


def _exit_now(log: logging.Logger, bound: float) -> None:
    """End the process at once: its shutdown overran its bound (runs on the watchdog thread)."""
    log.error("still running %ss after the stop request; exiting now", bound)
    logging.shutdown()  # flush what was logged
    os._exit(1)


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
    """

    def __init__(self, config: Config, section: GatewaySection, protocol: str, layer: Any = None) -> None:
        self.config = config
        self.section = section
        self.protocol = protocol
        self.layer = layer if layer is not None else build_layer(config.layer)
        self.metrics = Metrics()
        self.log = logging.getLogger(f"gateway.{protocol}")
        self.schema: ProtocolSchema = load_schema(protocol)
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
        mtype = message.get("type", "?")
        self._inflight += 1
        self._idle.clear()
        started = time.perf_counter()
        try:
            await self.layer.send(channel, message)
        except ChannelFull as exc:
            self.metrics.inc("handoff_failures_total", "messages the layer refused", reason="full", type=mtype)
            raise HandoffError("full", f"channel {channel!r} is full") from exc
        except LAYER_ERRORS as exc:
            self.metrics.inc("handoff_failures_total", "messages the layer refused", reason="unavailable", type=mtype)
            self.layer_down(exc)
            raise HandoffError("unavailable", f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
        self.layer_up()
        self.metrics.observe("layer_send_seconds", time.perf_counter() - started, "layer send latency")
        self.metrics.inc("messages_in_total", "messages handed to the layer", type=mtype)

    async def send_many(self, channel: str, messages: list[dict[str, Any]]) -> int:
        """Hand ``messages`` to the layer on ``channel``, in order; how many it took.

        The layer took the first ``n`` returned, in this order, and refused
        every later one (full): send those again, in order, to keep it. With
        a layer that has ``send_many`` (the batched one) that is one round
        trip; with another, the messages are sent one at a time, stopping at
        the first refusal. More than the layer's ``send_batch`` go in several
        round trips. Raises :class:`HandoffError` when the layer took none of them.
        """
        if not messages:
            return 0
        bulk = getattr(self.layer, "send_many", None)
        limit = getattr(self.layer, "send_batch", len(messages))
        if bulk is not None and len(messages) > limit:  # the layer's round trip holds so many
            taken = 0
            for start in range(0, len(messages), limit):
                chunk = messages[start:start + limit]
                try:
                    took = await self.send_many(channel, chunk)
                except HandoffError:
                    if not taken:
                        raise
                    return taken
                taken += took
                if took < len(chunk):
                    return taken
            return taken
        if bulk is None or len(messages) == 1:
            taken = 0
            for message in messages:
                try:
                    await self.send(channel, message)
                except HandoffError:
                    if not taken:
                        raise
                    break
                taken += 1
            return taken
        if self.strict:
            for message in messages:
                self.schema.validate(message)
        self._inflight += 1
        self._idle.clear()
        started = time.perf_counter()
        try:
            taken = await bulk(channel, messages)
        except LAYER_ERRORS as exc:
            for message in messages:
                self.metrics.inc("handoff_failures_total", "messages the layer refused", reason="unavailable",
                                 type=message.get("type", "?"))
            self.layer_down(exc)
            raise HandoffError("unavailable", f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
        self.layer_up()
        seconds = time.perf_counter() - started
        types: dict[str, int] = {}
        for message in messages[:taken]:
            mtype = message.get("type", "?")
            types[mtype] = types.get(mtype, 0) + 1
            self.metrics.observe("layer_send_seconds", seconds, "layer send latency")
        for mtype, count in types.items():
            self.metrics.inc("messages_in_total", "messages handed to the layer", amount=count, type=mtype)
        for message in messages[taken:]:
            self.metrics.inc("handoff_failures_total", "messages the layer refused", reason="full",
                             type=message.get("type", "?"))
        if not taken:
            raise HandoffError("full", f"channel {channel!r} is full")
        return taken

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

    def reject(self, channel: str, message: Any, problem: str) -> None:
        """Log and count a message a consumer sent that the gateway cannot use."""
        mtype = message.get("type", "?") if isinstance(message, dict) else "?"
        self.metrics.inc("invalid_messages_total", "consumer messages rejected", type=str(mtype))
        self.log.error("invalid message on %s: %s", channel, problem)


@dataclass
class Service:
    """A process `gateway up` runs beside a gateway (a local broker, say).

    Args:
        name: the prefix of its log lines.
        argv: the command.
        port: a TCP port on 127.0.0.1 to wait for before starting the gateway.
    """

    name: str
    argv: list[str]
    port: int | None = None


class StackUnavailable(Exception):
    """A gateway `gateway up` cannot run on this machine; the message says in
    one line what to do to add it."""


class Gateway:
    """Base class of a protocol's daemon; subclasses do the protocol's I/O.

    Args:
        runtime: the core services (layer, metrics, logging, tasks).
        section: the protocol's configuration section.

    Class attributes:
        protocol: the protocol name, as in the CLI and the YAML.
        section_class: the section dataclass (a :class:`GatewaySection`).
    """

    protocol: ClassVar[str]
    section_class: ClassVar[type[GatewaySection]]

    def __init__(self, runtime: Runtime, section: Any) -> None:
        self.runtime = runtime
        self.section = section
        self.log = runtime.log

    @classmethod
    def apply_overrides(cls, section: Any, listen: str | None) -> None:
        """Apply the CLI's ``--listen HOST:PORT`` to the section."""
        if listen is not None:
            if not hasattr(section, "listen"):
                raise SystemExit(f"gateway {cls.protocol}: --listen does not apply to this protocol")
            section.listen = listen

    @classmethod
    def consumer_channels(cls, section: Any) -> list[str]:
        """Channels this gateway sends to, which Django workers must consume."""
        return []

    @classmethod
    def conversation_key(cls, message: dict[str, Any]) -> Any:
        """The conversation (unit of ordering, as the protocol's spec states) of a
        message this gateway emits: ``gateway worker`` handles the messages of
        one conversation in order and different conversations concurrently.
        Return a hashable, or ``None`` for a message with no order to keep.
        The default is the message's ``reply_channel``."""
        return message.get("reply_channel")

    @classmethod
    def stack_services(cls, section: Any, config: Config) -> list[Service]:
        """Processes `gateway up` starts before this gateway; raise
        :class:`StackUnavailable` when the gateway cannot run here."""
        return []

    def outbound_channels(self) -> list[str]:
        """Named channels consumers send this gateway work on (e.g. ``email.send``)."""
        return []

    def uses_process_channel(self) -> bool:
        """Whether consumers reply on this process's reply channels."""
        return False

    async def start(self) -> None:
        """Connect or start listening."""

    async def handle(self, channel: str, message: dict[str, Any]) -> None:
        """Act on a valid message from a consumer, received on ``channel``."""
        raise NotImplementedError

    async def handle_invalid(self, channel: str, message: Any, problem: str) -> None:
        """Answer an invalid consumer message (after the core logged and counted it)."""

    async def stop_accepting(self) -> None:
        """Stop taking new connections or messages from the outside."""

    async def drain(self) -> None:
        """Wait for the protocol's work in flight (bounded by the grace period)."""

    async def close(self) -> None:
        """Close connections the protocol's way."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Protocol health for ``/healthz``."""
        return True, {}


class Daemon:
    """Runs one :class:`Gateway` with its receive loops until told to stop.

    Args:
        gateway_class: the protocol's gateway class.
        config: the configuration.
        layer: a layer to use instead of building one (tests).
        exit_watchdog: once told to stop, end the whole process if it is still
            running after the shutdown's bound (for a daemon process, never in
            tests that host a daemon in their own process).
    """

    def __init__(self, gateway_class: type[Gateway], config: Config, layer: Any = None,
                 exit_watchdog: bool = False) -> None:
        section = config.sections[gateway_class.protocol]
        self.exit_watchdog = exit_watchdog
        self.runtime = Runtime(config, section, gateway_class.protocol, layer)
        self.gateway = gateway_class(self.runtime, section)
        self.section = section
        self.log = self.runtime.log
        self.health_server: HealthServer | None = None
        self._dispatch_slots = asyncio.Semaphore(section.outbound_concurrency)

    async def run(self) -> int:
        """Start, wait for SIGTERM/SIGINT (or :meth:`stop`), drain; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        await self.start()
        await self.runtime.stopping.wait()
        await self.shutdown()
        return 0

    async def start(self) -> None:
        """Start the gateway, its receive loops and the health endpoint."""
        runtime = self.runtime
        if self.section.health.listen:
            self.health_server = HealthServer(runtime.metrics, self._status)
            await self.health_server.start(*split_host_port(self.section.health.listen))
        await self.gateway.start()
        runtime.spawn(self._probe_layer(), "layer probe")
        for channel in self.gateway.outbound_channels():
            runtime.spawn(self._receive_loop(channel, process=False), f"receive {channel}")
        if self.gateway.uses_process_channel():
            runtime.spawn(self._receive_loop(runtime.layer.process_channel, process=True), "receive replies")
        self.log.info("%s gateway started (event loop: %s)", self.gateway.protocol, eventloop.loop_name())

    def stop(self) -> None:
        """Ask the daemon to drain and exit."""
        if not self.runtime.stopping.is_set():
            self.log.info("stopping: draining for up to %ss", self.section.grace_period)
            self.runtime.stopping.set()
            if self.exit_watchdog:
                bound = self.section.grace_period + CLOSE_TIMEOUT + EXIT_MARGIN
                timer = threading.Timer(bound, _exit_now, (self.log, bound))
                timer.daemon = True
                timer.start()

    async def shutdown(self) -> None:
        """Stop accepting, drain within the grace period, close everything.

        Bounded whatever state a task is in: draining gets ``grace_period``,
        closing (connections, tasks, the layer) at most :data:`CLOSE_TIMEOUT`
        more. A step that overruns is abandoned with a warning, never awaited:
        a peer or a layer that stopped answering (a frozen Redis holds every
        send for the socket timeout) must not keep the process from exiting.
        """
        runtime = self.runtime
        runtime.stopping.set()
        grace = self.section.grace_period
        loop = asyncio.get_running_loop()
        drained = loop.time() + grace

        async def drain() -> None:
            await self.gateway.stop_accepting()
            await asyncio.gather(self.gateway.drain(), runtime.handoffs_done())

        if not await self._within(drain(), drained - loop.time()):
            self.log.warning("grace period of %ss over; closing with work in flight", grace)
        closed = loop.time() + CLOSE_TIMEOUT
        if not await self._within(self.gateway.close(), closed - loop.time()):
            self.log.warning("closing connections took over %ss; exiting without waiting for them", CLOSE_TIMEOUT)
        # Each clean-up step gets a moment even when closing used up the time:
        # cancelling the receive loops lets the loop wind down without them.
        await self._within(runtime.cancel_tasks(), max(closed - loop.time(), CLEANUP_MINIMUM))
        if self.health_server:
            await self._within(self.health_server.close(), max(closed - loop.time(), CLEANUP_MINIMUM))
        await self._within(close_layer(runtime.layer), max(closed - loop.time(), CLEANUP_MINIMUM))
        self.log.info("%s gateway stopped", self.gateway.protocol)

    async def _within(self, step: Coroutine[Any, Any, Any], seconds: float) -> bool:
        """Run ``step`` for at most ``seconds``; True when it finished.

        Unlike ``asyncio.wait_for``, an overrun step is cancelled and left
        behind, not awaited: a step that ignores or delays its cancellation
        cannot hold the shutdown.
        """
        task = asyncio.ensure_future(step)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, seconds))
        if not done:
            task.cancel()
            return False
        if not task.cancelled() and task.exception() is not None:
            self.log.error("shutdown step failed", exc_info=task.exception())
        return True

    async def _probe_layer(self) -> None:
        """PING the layer now and then, so that ``layer_ok`` (and /healthz)
        follows Redis while no traffic does: every second while it is
        unreachable, every :data:`LAYER_PROBE_INTERVAL` seconds otherwise.

        Sends and receives report the layer's state as they go; an idle
        gateway has none, and without the probe it would stay 503 after Redis
        came back (and 200 after it went away) until a message passed.
        """
        runtime = self.runtime
        connection = getattr(runtime.layer, "connection", None)
        if connection is None:  # the in-memory layer cannot be unreachable
            return
        while True:
            await asyncio.sleep(LAYER_PROBE_INTERVAL if runtime.layer_ok else LAYER_PROBE_RETRY)
            try:
                await asyncio.wait_for(connection(0).ping(), LAYER_PROBE_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - LAYER_ERRORS, or a pool that cannot connect
                runtime.layer_down(exc)
            else:
                runtime.layer_up()

    def _status(self) -> tuple[bool, dict[str, Any]]:
        ok, details = self.gateway.health()
        healthy = ok and self.runtime.layer_ok and not self.runtime.stopping.is_set()
        return healthy, {"layer": self.runtime.layer_ok, "stopping": self.runtime.stopping.is_set(), **details}

    async def _receive_loop(self, channel: str, process: bool) -> None:
        """Receive consumers' messages on ``channel`` for as long as the daemon runs."""
        runtime = self.runtime
        backoff = Backoff()
        while True:
            try:
                if process:
                    target, message = await runtime.layer.receive_single(channel)
                else:
                    target, message = channel, await runtime.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except LAYER_ERRORS as exc:
                runtime.layer_down(exc)
                await backoff.wait()
                continue
            except Exception:  # a message that does not deserialize, for one
                runtime.metrics.inc("receive_errors_total", "messages that could not be received")
                self.log.exception("receiving on %s failed", channel)
                await backoff.wait()
                continue
            backoff.reset()
            runtime.layer_up()
            # channels_redis's group_send delivers one copy per process, naming every
            # member channel of this process in a list.
            for each in target if isinstance(target, list) else [target]:
                await self._dispatch(each, message, inline=process)

    async def _dispatch(self, channel: str, message: Any, inline: bool) -> None:
        problem = self.runtime.schema.problem(message)
        if problem is not None:
            self.runtime.reject(channel, message, problem)
            await self._guarded(self.gateway.handle_invalid(channel, message, problem), channel, message)
            return
        self.runtime.metrics.inc("messages_out_total", "consumer messages acted on", type=message["type"])
        if inline:
            # Reply-channel messages keep their order: the gateway handles them in arrival order.
            await self._guarded(self.gateway.handle(channel, message), channel, message)
            return
        await self._dispatch_slots.acquire()
        task = self.runtime.spawn(self._guarded(self.gateway.handle(channel, message), channel, message),
                                  f"handle {message['type']}")
        task.add_done_callback(lambda _t: self._dispatch_slots.release())

    async def _guarded(self, coro: Coroutine[Any, Any, Any], channel: str, message: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except InvalidMessage as exc:
            self.runtime.reject(channel, message, str(exc))
        except Exception:
            mtype = message.get("type", "?") if isinstance(message, dict) else "?"
            self.runtime.metrics.inc("handler_errors_total", "consumer messages whose handling failed", type=mtype)
            self.log.exception("handling %s from %s failed", mtype, channel)


def run_gateway(gateway_class: type[Gateway], config: Config) -> int:
    """Run one gateway daemon in a new event loop; return its exit code.

    Once told to stop, the process is gone within ``grace_period`` plus
    :data:`CLOSE_TIMEOUT` plus :data:`EXIT_MARGIN` seconds: past that (the
    event loop blocked, or a task that never yields to its cancellation
    while the loop winds down), a watchdog thread ends it with exit code 1.
    """

    async def main() -> int:
        return await Daemon(gateway_class, config, exit_watchdog=True).run()

    return eventloop.run(main())
