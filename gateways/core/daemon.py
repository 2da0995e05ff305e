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
import threading
import time
from typing import Any, Coroutine

import protocol_specs
from gateways.core import eventloop, tracing
from gateways.core.backlog import publish_backlog
from gateways.core.backoff import Backoff, receive_with_backoff
from gateways.core.config import Config, split_host_port
from gateways.core.deadletters import DeadLetterGauges, describe_error
from gateways.core.gateway import Gateway
from gateways.core.health import HealthServer
from gateways.core.layer import close_layer
from gateways.core.lifecycle import on_stop_signals
from gateways.core.runtime import LAYER_ERRORS, Runtime
from gateways.core.specs import InvalidMessage, load_schema


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
        self.runtime = Runtime(config, section, gateway_class.protocol, layer,
                               load_schema(gateway_class.protocol, gateway_class.specs_dir))
        tracing.instrument_runtime(self.runtime)  # before the gateway keeps a reference to runtime.send
        self.gateway = gateway_class(self.runtime, section)
        tracing.instrument_gateway(self.gateway)
        self.section = section
        self.log = self.runtime.log
        self.health_server: HealthServer | None = None
        self._dispatch_slots = asyncio.Semaphore(section.outbound_concurrency)

    async def run(self) -> int:
        """Start, wait for SIGTERM/SIGINT (or :meth:`stop`), drain; return the exit code."""
        on_stop_signals(asyncio.get_running_loop(), self.stop)
        await self.start()
        await self.runtime.stopping.wait()
        await self.shutdown()
        return 0

    async def start(self) -> None:
        """Start the gateway, its receive loops and the health endpoint."""
        runtime = self.runtime
        if self.section.health.listen:
            self.health_server = HealthServer(runtime.metrics, self._status)
            if runtime.dead_letters is not None:
                runtime.metrics.on_scrape(DeadLetterGauges(runtime.dead_letters, runtime.metrics).refresh)
            publish_backlog(runtime.metrics, runtime.layer, self._consumer_channels())
            await self.health_server.start(*split_host_port(self.section.health.listen))
        await self.gateway.start()
        runtime.spawn(self._probe_layer(), "layer probe")
        for channel in self.gateway.send_channels():
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
        if runtime.dead_letters is not None:
            await self._within(runtime.dead_letters.close(), max(closed - loop.time(), CLEANUP_MINIMUM))
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

    def _consumer_channels(self) -> list[str]:
        routing = protocol_specs.routing(self.gateway.protocol) or type(self.gateway)
        return list(routing.consumer_channels(self.section))

    def _status(self) -> tuple[bool, dict[str, Any]]:
        ok, details = self.gateway.health()
        healthy = ok and self.runtime.layer_ok and not self.runtime.stopping.is_set()
        return healthy, {"layer": self.runtime.layer_ok, "stopping": self.runtime.stopping.is_set(), **details}

    async def _receive_loop(self, channel: str, process: bool) -> None:
        """Receive consumers' messages on ``channel`` for as long as the daemon runs."""
        runtime = self.runtime
        backoff = Backoff()

        async def receive() -> tuple[Any, Any]:
            if process:
                return await runtime.layer.receive_single(channel)
            return channel, await runtime.layer.receive(channel)

        def failed(exc: BaseException) -> None:
            runtime.metrics.inc("receive_errors_total", "messages that could not be received")
            self.log.error("receiving on %s failed", channel, exc_info=exc)

        while True:
            target, message = await receive_with_backoff(receive, backoff, LAYER_ERRORS, runtime.layer_down, failed)
            runtime.layer_up()
            # channels_redis's group_send delivers one copy per process, naming every
            # member channel of this process in a list.
            for each in target if isinstance(target, list) else [target]:
                await self._dispatch(each, message, inline=process)

    async def _dispatch(self, channel: str, message: Any, inline: bool) -> None:
        problem = self.runtime.schema.problem(message)
        if problem is not None:
            await self._invalid(channel, message, problem)
            return
        self.runtime.metrics.inc("messages_out_total", "consumer messages acted on", type=message["type"])
        if inline:
            # Reply-channel messages keep their order: the gateway handles them in arrival order.
            await self._handle(channel, message)
            return
        await self._dispatch_slots.acquire()
        task = self.runtime.spawn(self._handle(channel, message), f"handle {message['type']}")
        task.add_done_callback(lambda _t: self._dispatch_slots.release())

    async def _handle(self, channel: str, message: dict[str, Any]) -> None:
        """Let the gateway act on a valid message; answer it as invalid when the gateway says so."""
        try:
            await self.gateway.handle(channel, message)
        except asyncio.CancelledError:
            raise
        except InvalidMessage as exc:
            await self._invalid(channel, message, str(exc))
        except Exception as exc:
            self.runtime.metrics.inc("handler_errors_total", "consumer messages whose handling failed",
                                     type=message["type"])
            self.log.exception("handling %s from %s failed", message["type"], channel)
            # A gateway bug must not lose the consumer's message: the operator can replay it.
            await self.runtime.dead_letter(channel, message, describe_error(exc), 1, time.time())

    async def _invalid(self, channel: str, message: Any, problem: str) -> None:
        """The one answer to an invalid consumer message: logged, counted, answered the protocol's way."""
        self.runtime.log_invalid(channel, message, problem)
        try:
            await self.gateway.answer_invalid(channel, message, problem)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("answering the invalid message on %s failed", channel)
        if isinstance(message, dict):
            # Kept where an operator sees it (`gateway dead-letters list`), not only in a log line.
            await self.runtime.dead_letter(channel, message, f"InvalidMessage: {problem}", 1, time.time())


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
