"""``gateway worker``: the Django project's consumers for the configured channels.

It runs the project's ASGI application — the same ``ProtocolTypeRouter`` /
``ChannelNameRouter`` / consumer classes ``runworker`` runs — with the Django
project and the channels taken from the YAML, and three differences:

- messages of different conversations are handled concurrently (up to
  ``django.concurrency`` per channel) while each conversation keeps its order
  (:mod:`gateways.core.lanes`); see :func:`conversation_key` for what a
  conversation is. Sync handlers stay thread-sensitive as in Channels — one
  thread for the whole process, safe on SQLite — unless
  ``django.parallel_sync`` gives each lane a thread;
- a message whose consumer raised is not lost: it is retried with backoff
  by the channel's ``worker.retry`` policy, holding its conversation, then
  dead-lettered (:mod:`gateways.core.retries`; stock ``runworker`` logs and
  drops it);
- a channel-layer error does not end the worker: it logs, backs off and
  listens again (stock ``runworker`` exits when Redis goes away);
- SIGTERM/SIGINT drains: stop taking messages, handle every message already
  taken off the layer (including what the batched layer prefetched), hand
  open connections of per-connection instances over to the next worker
  (:meth:`gateways.core.asgi_host.AsgiHost.hand_over`), exit 0.

A channel routed to anything but a gateway consumer (a stock Channels
consumer, ``URLRouter``, middleware, any ASGI application) gets the messages
of each connection served by an application instance of its own, as Daphne
does (:mod:`gateways.core.asgi_host`); its other messages still go to lanes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import sys
from typing import Any, Hashable

import protocol_specs
from gateways.core import eventloop, oldconnections, registry, tracing
from gateways.core.asgi_host import AsgiHost, track_groups
from gateways.core.backoff import Backoff
from gateways.core.config import Config, RetryConfig, WorkerConfig
from gateways.core.lifecycle import on_stop_signals
from gateways.core.runtime import LAYER_ERRORS
from gateways.core.lanes import ChannelLanes, KeyFunction
from gateways.core.retries import DeadLetters, protocol_of

log = logging.getLogger("gateway.worker")

#: Seconds a stopping worker waits for messages in flight before it exits anyway.
GRACE_PERIOD = 15.0


def worker_channels(config: Config) -> list[str]:
    """Every channel the configured gateways route to, plus ``django.channels``."""
    channels = list(config.django.channels) if config.django else []
    for name, section in config.sections.items():
        channels.extend(_routing(name).consumer_channels(section))
    return list(dict.fromkeys(channels))


def _routing(protocol: str) -> Any:
    """What states ``protocol``'s consumer channels and conversations: its spec
    module, which needs no protocol extra (aiosmtpd, aiomqtt, slack_sdk), or
    for a plug-in without one its gateway class."""
    return protocol_specs.routing(protocol) or registry.gateway_class(protocol)


def prepare_django(config: Config) -> None:
    """Put the project on ``sys.path`` and point Django at its settings and this file."""
    if config.django is None:
        raise SystemExit(f"{config.path}: no `django:` section naming the settings module")
    for entry in reversed(config.django.path):
        sys.path.insert(0, str(config.resolve(entry)))
    # The file names the project explicitly: it wins over an inherited environment.
    os.environ["DJANGO_SETTINGS_MODULE"] = config.django.settings
    os.environ["GATEWAY_CONFIG"] = str(config.path)


def run_worker(config: Config, channels: list[str]) -> int:
    """Run the concurrent worker for ``channels`` (default: :func:`worker_channels`)."""
    prepare_django(config)
    channels = channels or worker_channels(config)
    if not channels:
        raise SystemExit(f"{config.path}: no channels to consume")
    import django

    django.setup()
    from channels.layers import get_channel_layer
    from channels.routing import get_default_application

    concurrency = config.django.concurrency if config.django else 64
    parallel_sync = config.django.parallel_sync if config.django else False
    transport = gateway_layer(config)
    layer = get_channel_layer()
    worker = ConcurrentWorker(get_default_application(), channels, layer, concurrency,
                              parallel_sync=parallel_sync, gateway_layer=transport, retries=config.worker,
                              dead_letters=DeadLetters(dead_letter_store(config), transport or layer, settle))
    if tracing.setup("gateway-worker"):
        tracing.instrument_layer(worker.layer)
        tracing.instrument_layer(worker.transport)
    log.info("Running worker for channels %s (%d at once per channel; sync handlers %s)", channels,
             concurrency, "in parallel, a thread per lane" if parallel_sync else "on one thread")
    return eventloop.run(worker.run())


def gateway_layer(config: Config) -> Any | None:
    """The layer the YAML describes, which the worker takes messages off and
    per-connection instances answer the gateway through (``None`` when the YAML
    names no server, or an in-process one: then the project's layer does both).

    A project written for Daphne keeps its own ``CHANNEL_LAYERS`` for what its
    consumers do (channel names, groups), often channels_redis with one
    message per round trip and a capacity of 100; the worker's own traffic
    needs the batched layer's round trips and the room the YAML gives reply
    channels (``layer.reply_capacity``): all replies go to the gateway's one
    process channel. Both layers read and write the same Redis data.
    """
    from dataclasses import replace

    from gateways.core.layer import build_layer

    layer = config.layer
    override = os.environ.get("GATEWAY_LAYER_URL")  # set by `gateway up` for its embedded server
    if override:
        layer = replace(layer, url=override)
    if not layer.url or layer.url.startswith("memory:"):  # in-process: only the project's layer is shared
        return None
    return build_layer(layer)


def dead_letter_store(config: Config) -> Any | None:
    """The stack's dead-letter store, or None (logged) when it cannot be made:
    then every message given up is an ERROR line with its traceback."""
    from gateways.core.deadletters import DeadLetterStore

    try:
        return DeadLetterStore.from_config(config)
    except Exception as exc:  # noqa: BLE001 - the worker runs on; give-ups are logged instead
        log.error("no dead-letter store (%s: %s): messages given up after their retries are only logged",
                  type(exc).__name__, exc)
        return None


def settle(message: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The message the protocol's gateway wants once ``message`` was dead-lettered
    (its spec module's ``settled``; email: ``email.ack``), or None."""
    protocol = protocol_of(message)
    if protocol not in registry.protocol_names():
        return None
    try:
        hook = getattr(_routing(protocol), "settled", None)
    except ImportError:
        return None
    return hook(message) if callable(hook) else None


def notify_ready() -> None:
    """Tell systemd the worker runs (``Type=notify`` units), when it asked.

    With ``Type=notify``, ``systemctl start`` returns only once the new worker
    listens, which is what a rolling restart waits for before stopping the
    old one (docs/worker.md). Without ``NOTIFY_SOCKET`` this does nothing.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(b"READY=1")
    except OSError as exc:
        log.warning("could not tell systemd the worker is ready (NOTIFY_SOCKET=%s): %s", address, exc)


# --------------------------------------------------------------------------
# What a conversation is.


def _by_keys(keys: tuple[str, ...]) -> KeyFunction:
    def key(message: dict[str, Any]) -> Hashable | None:
        values = tuple(message.get(k) for k in keys)
        if all(v is None for v in values):
            return None
        return values if len(values) > 1 else values[0]

    return key


@functools.cache
def _protocol_rule(protocol: str) -> KeyFunction | None:
    if protocol not in registry.protocol_names():
        return None
    try:
        return _routing(protocol).conversation_key
    except ImportError:  # registered but not importable in this checkout
        return None


def _protocol_key(message: dict[str, Any]) -> Hashable | None:
    mtype = message.get("type")
    rule = _protocol_rule(mtype.partition(".")[0]) if isinstance(mtype, str) else None
    if rule is None:  # not a gateway's message
        return message.get("reply_channel")
    return rule(message)


def conversation_key(consumer_class: type | None) -> KeyFunction:
    """The function mapping a message of ``consumer_class``'s channel to its conversation.

    In order of precedence:

    1. the consumer class's ``conversation_key`` attribute (a per-route
       override): a message key name, a tuple of key names, or a
       ``staticmethod`` taking the message and returning a hashable (``None``
       for "no order to keep");
    2. the protocol's rule, from the message type's prefix: the
       ``conversation_key`` of ``protocol_specs.<protocol>`` (the gateway
       class's, for a plug-in without such a module);
    3. the message's ``reply_channel``; a message without one is unordered.

    Args:
        consumer_class: the consumer serving the channel, when known.
    """
    override = getattr(consumer_class, "conversation_key", None) if consumer_class else None
    if isinstance(override, str):
        return _by_keys((override,))
    if isinstance(override, tuple):
        return _by_keys(override)
    if callable(override):
        return override
    return _protocol_key


def consumer_class_for(application: Any, channel: str) -> type | None:
    """The consumer class a ``ProtocolTypeRouter``/``ChannelNameRouter`` tree
    runs for ``channel``, or ``None`` when it cannot be seen (custom routers).

    Raises:
        LookupError: a ``ChannelNameRouter`` in the tree does not route ``channel``.
    """
    node = application
    for _ in range(20):  # routers and middleware nest a few levels at most
        mapping = getattr(node, "application_mapping", None)
        if isinstance(mapping, dict):
            if "channel" in mapping and channel not in mapping:
                node = mapping["channel"]
            elif channel in mapping:
                node = mapping[channel]
            else:
                raise LookupError(f"no consumer is routed for channel {channel!r}")
            continue
        if getattr(node, "consumer_class", None) is not None:
            return node.consumer_class
        inner = getattr(node, "inner", None) or getattr(node, "app", None)
        if inner is None:
            return None
        node = inner
    return None


def channel_application(application: Any, channel: str) -> Any | None:
    """The application a ``ChannelNameRouter`` in ``application`` routes ``channel``
    to, or ``None`` when no router in sight names it (custom routers)."""
    node = application
    for _ in range(20):
        mapping = getattr(node, "application_mapping", None)
        if isinstance(mapping, dict):
            if channel in mapping:
                return mapping[channel]
            if "channel" in mapping:
                node = mapping["channel"]
                continue
            return None
        inner = getattr(node, "inner", None) or getattr(node, "app", None)
        if inner is None:
            return None
        node = inner
    return None


def hosts_connections(consumer_class: type | None) -> bool:
    """True when a channel served by ``consumer_class`` (``None``: not visible, as
    behind ``URLRouter`` or middleware) gets an application instance per connection.

    Only a gateway consumer (``consumers.base.GatewayConsumer``) serves every
    connection from one instance; anything else is written for Daphne's model.
    """
    from consumers.base import GatewayConsumer

    return not (isinstance(consumer_class, type) and issubclass(consumer_class, GatewayConsumer))


# --------------------------------------------------------------------------
# The worker.


class ConcurrentWorker:
    """Listens on channels and runs their consumers on :class:`ChannelLanes`.

    Args:
        application: the project's ASGI application.
        channels: channel names to consume.
        channel_layer: the layer (any Channels layer; the batched one drains best).
        concurrency: messages handled at once per channel.
        parallel_sync: sync handlers of different conversations run in parallel
            threads (a thread per lane) instead of on the one thread-sensitive thread.
        gateway_layer: the layer messages are taken off and per-connection
            instances reply through (default: ``channel_layer``).
        retries: the ``worker:`` section (retry policy per channel); default: its defaults.
        dead_letters: where messages given up go; default: logged only.
    """

    def __init__(self, application: Any, channels: list[str], channel_layer: Any, concurrency: int = 64,
                 parallel_sync: bool = False, gateway_layer: Any | None = None,
                 retries: WorkerConfig | None = None, dead_letters: DeadLetters | None = None) -> None:
        if channel_layer is None:
            raise ValueError("the worker needs a channel layer (CHANNEL_LAYERS is not set)")
        self.application = application
        self.channels = channels
        self.layer = channel_layer
        self.transport = gateway_layer if gateway_layer is not None else channel_layer
        self.concurrency = concurrency
        self.parallel_sync = parallel_sync
        self.retries = retries or WorkerConfig()
        self.dead_letters = dead_letters or DeadLetters(None)
        self.lanes: dict[str, ChannelLanes] = {}
        self.hosts: dict[str, AsgiHost] = {}
        self.stopping: asyncio.Event | None = None
        self._idle_listeners: set[asyncio.Task] = set()

    def _make_lanes(self) -> None:
        for channel in self.channels:
            try:
                consumer = consumer_class_for(self.application, channel)
            except LookupError as exc:
                raise SystemExit(f"gateway worker: {exc} (add it to the project's ChannelNameRouter)") from exc
            policy: RetryConfig = self.retries.retry_for(channel)
            self.lanes[channel] = ChannelLanes(channel, self.application, conversation_key(consumer),
                                               self.concurrency, parallel_sync=self.parallel_sync,
                                               retry=policy, give_up=self.dead_letters.give_up)
            log.info("%s: a failed message is tried %d time(s) in all, %ss to %ss apart, then dead-lettered",
                     channel, policy.attempts, policy.initial_delay, policy.max_delay)
            routed = channel_application(self.application, channel)
            if routed is not None and hosts_connections(consumer):
                self.hosts[channel] = AsgiHost(channel, routed, self.transport, limit=4 * self.concurrency)
                log.info("%s: %s gets an instance per connection (keep one worker process on this channel; "
                         "two only while a rolling restart overlaps them)",
                         channel, getattr(consumer, "__name__", None) or type(routed).__name__)
        if self.hosts:
            # Instances of different connections then share Channels' per-message hop to the sync thread.
            oldconnections.install()
            # So that a stopping worker can take its instances out of their groups.
            track_groups(self.layer)

    def stop(self) -> None:
        """Ask the worker to drain and exit."""
        if self.stopping is not None and not self.stopping.is_set():
            inflight = sum(lanes.inflight for lanes in self.lanes.values())
            inflight += sum(host.inflight for host in self.hosts.values())
            log.info("stopping: draining %d message(s) in flight and what was prefetched (up to %ss)",
                     inflight, GRACE_PERIOD)
            self.stopping.set()
            for listener in list(self._idle_listeners):
                listener.cancel()

    async def run(self) -> int:
        """Consume until SIGTERM/SIGINT (or :meth:`stop`), drain, return 0."""
        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        on_stop_signals(loop, self.stop)
        self._make_lanes()
        listeners = [asyncio.ensure_future(self._listen(channel)) for channel in self.channels]
        notify_ready()
        stop_wait = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([*listeners, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        for listener in listeners:
            if listener.done() and not listener.cancelled() and listener.exception() is not None:
                log.error("a listener failed; stopping", exc_info=listener.exception())
        self.stop()
        deadline = loop.time() + GRACE_PERIOD
        # Listeners holding a message finish handing it to a lane, unless the lanes
        # stay full past the grace period.
        _done, stuck = await asyncio.wait(listeners, timeout=GRACE_PERIOD)
        for listener in stuck:
            listener.cancel()
        await self._drain(max(0.0, deadline - loop.time()))
        return 0

    async def _listen(self, channel: str) -> None:
        """Take messages off ``channel`` into its lanes until stopping."""
        assert self.stopping is not None
        lanes = self.lanes[channel]
        backoff = Backoff(initial=0.2, maximum=10.0)
        me = asyncio.current_task()
        while not self.stopping.is_set():
            # While in this window the listener holds no message, so stop() may cancel
            # it: the batched layer's fetch runs on as its own task and keeps what it
            # took for the drain; channels_redis keeps a cancelled pop in its backup.
            self._idle_listeners.add(me)
            try:
                try:
                    message = await self.transport.receive(channel)
                except LAYER_ERRORS as exc:
                    log.warning("receiving on %s failed (%s: %s); retrying", channel, type(exc).__name__, exc)
                    await backoff.wait()
                    continue
                except asyncio.CancelledError:
                    if self.stopping.is_set():
                        return
                    raise
                except Exception:  # a message that does not deserialize, for one
                    log.exception("receiving on %s failed", channel)
                    await backoff.wait()
                    continue
            except asyncio.CancelledError:  # stopped during a backoff
                if self.stopping.is_set():
                    return
                raise
            finally:
                self._idle_listeners.discard(me)
            backoff.reset()
            await self._submit(lanes, message)

    async def _submit(self, lanes: ChannelLanes, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            lanes.stats["invalid"] += 1
            log.error("message without a type on %s dropped: %.200r", lanes.channel, message)
            return
        if self.dead_letters.late_redelivery(lanes.channel, message):
            lanes.stats["duplicates"] += 1
            return
        host = self.hosts.get(lanes.channel)
        if host is not None and host.accepts(message):
            await host.submit(message)
        else:
            await lanes.submit(message)

    async def _drain(self, grace: float) -> None:
        """Handle what was taken off the layer within ``grace`` seconds; close."""

        async def finish() -> None:
            stop_fetching = getattr(self.transport, "stop_fetching", None)
            if stop_fetching is not None:
                await stop_fetching()
                for channel, lanes in self.lanes.items():
                    for _target, message in self.transport.take_buffered(channel):
                        await self._submit(lanes, message)
            await asyncio.gather(*(lanes.idle() for lanes in self.lanes.values()),
                                 *(host.idle() for host in self.hosts.values()))

        try:
            await asyncio.wait_for(finish(), grace)
        except asyncio.TimeoutError:
            left = sum(lanes.inflight for lanes in self.lanes.values())
            left += sum(host.inflight for host in self.hosts.values())
            for host in self.hosts.values():
                for line in host.pending():
                    log.warning("still in flight on %s: %s", host.channel, line)
            given_up = 0
            for lanes in self.lanes.values():
                given_up += await lanes.give_up_retries()
            log.warning("grace period of %ss over; exiting with %d message(s) unhandled (%d of them being "
                        "retried: dead-lettered)", GRACE_PERIOD, left, given_up)
        for host in self.hosts.values():
            await host.hand_over()
        for lanes in self.lanes.values():
            await lanes.close()
        for host in self.hosts.values():
            await host.close()
        totals = {channel: dict(lanes.stats) for channel, lanes in self.lanes.items()}
        for channel, host in self.hosts.items():
            totals[channel] = {**totals[channel], **{f"connection {k}": v for k, v in host.stats.items()}}
        log.info("worker stopped: %s", totals)
        store = self.dead_letters.store
        if store is not None:
            try:
                await asyncio.wait_for(store.close(), 5)
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        for layer in {id(self.layer): self.layer, id(self.transport): self.transport}.values():
            close = getattr(layer, "close_pools", None)
            if close is not None:
                try:
                    await asyncio.wait_for(close(), 5)
                except (OSError, asyncio.TimeoutError, ConnectionError):
                    pass

