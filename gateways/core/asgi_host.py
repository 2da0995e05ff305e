"""One ASGI application instance per connection, as Daphne runs them.

A channel that ``ChannelNameRouter`` routes to anything other than a gateway
consumer (a stock ``AsyncWebsocketConsumer.as_asgi()``, the project's
``AuthMiddlewareStack(URLRouter(...))``, any ASGI application) gets, for
each connection, its own instance of that application, with:

- the connection's scope, built from the message that opens it;
- a ``receive`` fed the connection's messages in order, one at a time (the
  instance asks for the next one when it is done with the last);
- a ``send`` that turns what the instance sends into a message on the
  connection's reply channel.

The instance takes its own ``channel_name`` from the layer as every Channels
consumer does, so groups, ``group_send`` and handler methods work as under
Daphne. Different connections run concurrently; sync code runs on asgiref's
one thread-sensitive thread, as under Daphne.

The translation between a protocol's messages and ASGI lives with the
protocol's consumers, in a module named ``consumers.asgi_<protocol>``
(:func:`adapter_for`): the core names no protocol, and the consumers side
already depends only on the specs. A protocol without such a module is
served the gateway way only.

A message for a connection this process has no instance for (the worker
restarted, or another worker process saw the connect) gets a new instance
that first handles a connect built from the message (its accept absorbed,
since the connection is open already), then the message. A connection whose
instance ended (disconnect handled, the application returned or raised) is
remembered for a while so that late messages are dropped rather than
starting a new instance.

A stopping worker hands its open connections over (:meth:`AsgiHost.hand_over`)
instead of leaving them without an instance until their next message: for
each one it sends the route's channel a *resume* — the connection's
handshake again, as a connect marked as a resume — so that whichever worker
takes the channel next re-creates the instance at once (its connect runs
again, its accept absorbed, so state on ``self`` and group memberships are
rebuilt even for a connection that stays quiet) and acknowledges it once
that connect was handled. The old instances stay in their groups until
then (at most :data:`HANDOVER_WAIT` seconds; :data:`HANDOVER_FIRST` when no
other worker runs), so a broadcast in between reaches the connection, if
anything twice, never not at all. Then the stopping worker takes the old
instances' channel names out of every group they joined through the
project's layer (recorded by :func:`track_groups`) without running the
application's disconnect handler, since the client did not leave, and
cancels them. A worker that
already hosts the connection (its next message arrived first and
re-created it) acknowledges the resume and otherwise ignores it.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import importlib
import logging
import uuid
from typing import Any, Hashable, Protocol

from gateways.core import registry
from gateways.core.describe import describe

log = logging.getLogger("gateway.worker")

#: Connections whose instance ended, remembered to drop their late messages.
ENDED_REMEMBERED = 50_000

#: Seconds an instance may take to end after it took its connection's last
#: message; then it is cancelled and forgotten (Daphne's application_close_timeout
#: is 10). Channels' consumers end by cancelling their channel-layer receive, and
#: channels_redis on redis-py 8 occasionally loses that cancellation, leaving the
#: receive blocked for good; the connection must not hold the worker's drain.
END_TIMEOUT = 5.0

#: Seconds a stopping worker waits for another worker to acknowledge the
#: connections it handed over before its instances leave their groups. A
#: rolling restart's new worker answers the first within milliseconds; with
#: no acknowledgement within :data:`HANDOVER_FIRST`, no other worker runs and
#: the stopping one stops waiting.
HANDOVER_WAIT = 5.0
HANDOVER_FIRST = 1.0


class AsgiAdapter(Protocol):
    """What :class:`AsgiHost` needs of a protocol (``consumers.asgi_<protocol>``)."""

    def handles(self, message: dict[str, Any]) -> bool: ...  # noqa: D102
    def connection(self, message: dict[str, Any]) -> Hashable | None: ...  # noqa: D102
    def starts(self, message: dict[str, Any]) -> bool: ...  # noqa: D102
    def ends(self, message: dict[str, Any]) -> bool: ...  # noqa: D102
    def scope(self, message: dict[str, Any]) -> dict[str, Any]: ...  # noqa: D102
    def event(self, message: dict[str, Any]) -> dict[str, Any]: ...  # noqa: D102
    def recreated_connect(self, message: dict[str, Any]) -> dict[str, Any]: ...  # noqa: D102
    def resume(self, start: dict[str, Any], acknowledge: str) -> dict[str, Any]: ...  # noqa: D102
    def resumes(self, message: dict[str, Any]) -> str | None: ...  # noqa: D102
    def resumed(self, message: dict[str, Any]) -> dict[str, Any]: ...  # noqa: D102
    def reply(self, sent: dict[str, Any], start: dict[str, Any],  # noqa: D102
              recreated: bool = False) -> dict[str, Any] | None: ...
    def failed(self, start: dict[str, Any]) -> dict[str, Any]: ...  # noqa: D102


@functools.cache
def adapter_for(protocol: str) -> AsgiAdapter | None:
    """The ASGI translation of an installed ``protocol``, or None when it has none."""
    if protocol not in registry.protocol_names():
        return None
    name = f"consumers.asgi_{protocol}"
    try:
        return importlib.import_module(name)  # type: ignore[return-value]
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            return None
        raise


def adapter_for_message(message: dict[str, Any]) -> AsgiAdapter | None:
    """The adapter that serves ``message`` per connection, if any."""
    mtype = message.get("type")
    if not isinstance(mtype, str):
        return None
    adapter = adapter_for(mtype.partition(".")[0])
    return adapter if adapter is not None and adapter.handles(message) else None


#: The instance whose task runs the current code: group memberships made from
#: it (also from its sync code, which asgiref runs in a copy of its context)
#: are recorded on it for the hand-over.
_running: contextvars.ContextVar["_Instance | None"] = contextvars.ContextVar("asgi_instance", default=None)


def track_groups(layer: Any) -> None:
    """Record, per application instance, the groups it joins through ``layer``.

    ``group_add``/``group_discard`` of the layer object (the project's, which
    every consumer of the process shares) are wrapped: called from an
    instance's code they note the (group, channel) pair on the instance, so
    that :meth:`AsgiHost.hand_over` can take the instance's channel names out
    of its groups. Calls from anywhere else pass through unchanged. Wrapping
    twice is a no-op.
    """
    if layer is None or getattr(layer, "_gateway_groups_tracked", False):
        return
    add, discard = layer.group_add, layer.group_discard

    async def group_add(group: str, channel: str) -> None:
        await add(group, channel)
        instance = _running.get()
        if instance is not None:
            instance.groups[(group, channel)] = discard

    async def group_discard(group: str, channel: str) -> None:
        await discard(group, channel)
        instance = _running.get()
        if instance is not None:
            instance.groups.pop((group, channel), None)

    layer.group_add = group_add
    layer.group_discard = group_discard
    layer._gateway_groups_tracked = True


class _Instance:
    """One connection's application instance and its queue of messages."""

    def __init__(self, host: "AsgiHost", key: Hashable, adapter: AsgiAdapter, start: dict[str, Any],
                 recreated: bool) -> None:
        self.host = host
        self.key = key
        self.adapter = adapter
        self.start = start
        self.recreated = recreated
        self.reply_channel = start.get("reply_channel")
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.current: dict[str, Any] | None = None
        self.end_taken = False
        self.stopping_after_end = False
        self.failed = False
        self.over = False
        self.task: asyncio.Task | None = None
        #: (group, channel) -> the layer's own group_discard, for the hand-over.
        self.groups: dict[tuple[str, str], Any] = {}
        #: Where to acknowledge the resume this instance was re-created for, once handled.
        self.acknowledge: str | None = None

    def run(self, application: Any) -> None:
        scope = self.adapter.scope(self.start)
        self.task = asyncio.get_running_loop().create_task(
            self._run(application, scope), name=f"connection {self.host.channel} {self.key}")

    async def _run(self, application: Any, scope: dict[str, Any]) -> None:
        host = self.host
        _running.set(self)
        try:
            await application(scope, self.receive, self.send)
        except asyncio.CancelledError:
            if not self.stopping_after_end:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except Exception:
            self.failed = True
            host.stats["failed"] += 1
            what = describe(self.current) if self.current is not None else "no message yet"
            log.exception("application on %s failed handling %s (connection %s); closing the connection",
                          host.channel, what, self.key)
            if not self.end_taken:
                await self._send_reply(self.adapter.failed(self.start))
        finally:
            host._ended(self)

    async def receive(self) -> dict[str, Any]:
        """The instance's ASGI ``receive``: asking for the next message means the
        previous one is done."""
        if self.current is not None:
            self.host.stats["handled"] += 1
            self.current = None
            self.host._message_done()
            self.host._acknowledge(self)
        if self.end_taken:
            # The connection is over and the instance handled its end without
            # stopping (a consumer that does not raise StopConsumer): end it.
            self.stopping_after_end = True
            assert self.task is not None
            self.task.cancel()
            await asyncio.Event().wait()
        message = await self.queue.get()
        self.current = message
        if self.adapter.ends(message):
            self.end_taken = True
            asyncio.get_running_loop().call_later(END_TIMEOUT, self._end_overdue)
        return self.adapter.event(message)

    def _end_overdue(self) -> None:
        if self.over or self.task is None or self.task.done():
            return
        self.host.stats["end_overdue"] += 1
        log.warning("application on %s did not end within %ss of the end of connection %s; cancelled",
                    self.host.channel, END_TIMEOUT, self.key)
        self.stopping_after_end = True
        self.task.cancel()
        self.host._ended(self)

    async def send(self, event: dict[str, Any]) -> None:
        """The instance's ASGI ``send``: a message on the connection's reply channel.

        Raises:
            ValueError: the event has no counterpart in the protocol's spec.
        """
        message = self.adapter.reply(event, self.start, self.recreated)
        if message is not None:
            await self.host.layer.send(self.reply_channel, message)

    async def _send_reply(self, message: dict[str, Any]) -> None:
        try:
            await self.host.layer.send(self.reply_channel, message)
        except Exception as exc:  # the gateway closes it on its own when the connection dies
            log.warning("could not close connection %s: %s: %s", self.key, type(exc).__name__, exc)


class AsgiHost:
    """Runs an ASGI application per connection for the messages of one channel.

    Args:
        channel: the channel name.
        application: the ASGI application the channel is routed to.
        layer: the channel layer (replies go out through it).
        limit: most messages in flight (queued in instances or being handled);
            past that, :meth:`submit` waits, which stops the listener taking more.
    """

    def __init__(self, channel: str, application: Any, layer: Any, limit: int = 256) -> None:
        self.channel = channel
        self.application = application
        self.layer = layer
        self.limit = max(1, limit)
        self.instances: dict[Hashable, _Instance] = {}
        self.ended: collections.OrderedDict[Hashable, None] = collections.OrderedDict()
        self.inflight = 0
        self.stats: collections.Counter = collections.Counter()
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._acknowledgements: set[asyncio.Task] = set()

    @staticmethod
    def accepts(message: dict[str, Any]) -> bool:
        """True when ``message`` belongs to a connection this host can serve."""
        return adapter_for_message(message) is not None

    async def submit(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for its connection's instance (starting one if needed);
        wait while the channel is at its limit."""
        adapter = adapter_for_message(message)
        assert adapter is not None, "submit only what accepts() took"
        key = adapter.connection(message)
        if key is None:
            self.stats["invalid"] += 1
            log.error("%s on %s names no connection; dropped", describe(message), self.channel)
            return
        while self.inflight >= self.limit:
            self._changed.clear()
            await self._changed.wait()
        instance = self.instances.get(key)
        acknowledge = adapter.resumes(message)
        if acknowledge is not None and (instance is not None or key in self.ended):
            # Its next message got here first and re-created it (or it has ended).
            self.stats["resume_ignored"] += 1
            self._send_acknowledgement(acknowledge, adapter.resumed(message))
            return
        if instance is None:
            if key in self.ended:
                self.stats["dropped"] += 1
                log.debug("%s for connection %s, whose instance ended; dropped", describe(message), key)
                return
            if acknowledge is not None:
                self.stats["resumed"] += 1
                log.debug("connection %s handed over by a stopping worker; re-creating its instance", key)
                instance = self._start(key, adapter, message, recreated=True)
                instance.acknowledge = acknowledge
            elif adapter.starts(message):
                instance = self._start(key, adapter, message, recreated=False)
            else:
                # The instance that saw the connect is not in this process.
                self.stats["recreated"] += 1
                log.info("no instance for connection %s on %s (the worker restarted?); a new one "
                         "handles a connect first, then %s", key, self.channel, describe(message))
                instance = self._start(key, adapter, message, recreated=True)
                self._queue(instance, adapter.recreated_connect(message))
        self._queue(instance, message)

    def _start(self, key: Hashable, adapter: AsgiAdapter, message: dict[str, Any], recreated: bool) -> _Instance:
        instance = _Instance(self, key, adapter, message, recreated)
        self.instances[key] = instance
        self.stats["connections"] += 1
        instance.run(self.application)
        return instance

    def _queue(self, instance: _Instance, message: dict[str, Any]) -> None:
        self.inflight += 1
        self._idle.clear()
        instance.queue.put_nowait(message)

    def _message_done(self, count: int = 1) -> None:
        self.inflight -= count
        self._changed.set()
        if not self.inflight:
            self._idle.set()

    def _acknowledge(self, instance: _Instance) -> None:
        """The instance handled the resume it was re-created for: tell the stopping worker."""
        if instance.acknowledge is not None:
            self._send_acknowledgement(instance.acknowledge, instance.adapter.resumed(instance.start))
            instance.acknowledge = None

    def _send_acknowledgement(self, channel: str, message: dict[str, Any]) -> None:
        async def send() -> None:
            try:
                await self.layer.send(channel, message)
            except Exception as exc:  # the stopping worker waits HANDOVER_WAIT at most
                log.warning("could not acknowledge a handed-over connection on %s: %s: %s",
                            channel, type(exc).__name__, exc)

        task = asyncio.ensure_future(send())
        self._acknowledgements.add(task)
        task.add_done_callback(self._acknowledgements.discard)

    def _ended(self, instance: _Instance) -> None:
        """An instance is over: forget it, drop what it left, remember its connection."""
        if instance.over:
            return
        instance.over = True
        self._acknowledge(instance)
        if self.instances.get(instance.key) is instance:
            del self.instances[instance.key]
        self.ended[instance.key] = None
        while len(self.ended) > ENDED_REMEMBERED:
            self.ended.popitem(last=False)
        left = instance.queue.qsize() + (instance.current is not None)
        if instance.current is not None:
            if not instance.failed:
                self.stats["handled"] += 1
            instance.current = None
            left -= 1
            self._message_done()
        if left:
            self.stats["dropped"] += left
            while not instance.queue.empty():
                instance.queue.get_nowait()
            self._message_done(left)

    def pending(self, most: int = 5) -> list[str]:
        """What holds messages in flight (for the log of a worker that cannot drain)."""
        found = []
        for instance in self.instances.values():
            if instance.current is not None or not instance.queue.empty():
                what = describe(instance.current) if instance.current is not None else "nothing yet"
                found.append(f"connection {instance.key}: handling {what}, {instance.queue.qsize()} queued")
                if len(found) >= most:
                    break
        return found

    async def idle(self) -> None:
        """Wait until every submitted message was handled."""
        await self._idle.wait()

    async def hand_over(self, wait: float = HANDOVER_WAIT, first: float = HANDOVER_FIRST) -> None:
        """Hand every open connection to whichever worker takes the channel next.

        Called by a stopping worker once it has handled what it took: for each
        instance whose connection is still open, a resume goes to the channel
        (see the module's docstring); once another worker acknowledged them
        all, or after ``wait`` seconds (``first`` when none is acknowledged by
        then: no other worker runs), the instances' channel names leave the
        groups they joined, without their disconnect handler running. The
        instances are cancelled by :meth:`close` afterwards. A resume or a
        discard that fails is logged: that connection then gets its instance
        back with its next message, as without a hand-over.
        """
        instances = [i for i in self.instances.values() if not i.over and not i.end_taken]
        if not instances:
            return
        acknowledgements = f"handover.{uuid.uuid4().hex}"
        waiting = {i.key for i in instances}

        async def send(instance: _Instance) -> None:
            try:
                await self.layer.send(self.channel, instance.adapter.resume(instance.start, acknowledgements))
                self.stats["handed_over"] += 1
            except Exception as exc:
                waiting.discard(instance.key)
                log.warning("could not hand connection %s over: %s: %s", instance.key, type(exc).__name__, exc)

        answered = asyncio.Event()

        async def collect() -> None:
            while waiting:
                message = await self.layer.receive(acknowledgements)
                waiting.discard(instances[0].adapter.connection(message))
                answered.set()

        async def leave(instance: _Instance, group: str, channel: str, discard: Any) -> None:
            try:
                await discard(group, channel)
                self.stats["groups_left"] += 1
            except Exception as exc:
                log.warning("could not take %s (connection %s) out of group %s: %s: %s",
                            channel, instance.key, group, type(exc).__name__, exc)

        await asyncio.gather(*(send(i) for i in instances))
        # The old instances stay in their groups until the new ones joined theirs:
        # a broadcast in between may arrive twice, but is not lost.
        collector = asyncio.ensure_future(collect())
        started = asyncio.get_running_loop().time()
        one = asyncio.ensure_future(answered.wait())
        await asyncio.wait([collector, one], timeout=min(first, wait), return_when=asyncio.FIRST_COMPLETED)
        one.cancel()
        if answered.is_set() and not collector.done():
            await asyncio.wait([collector], timeout=max(0.0, wait - (asyncio.get_running_loop().time() - started)))
        if not collector.done():
            collector.cancel()  # not awaited: a layer's receive may swallow its cancellation
            log.info("%d of %d connection(s) on %s not taken over by another worker within %.1fs; they "
                     "get their instance back with their next message", len(waiting), len(instances),
                     self.channel, asyncio.get_running_loop().time() - started)
        elif collector.exception() is not None:
            log.warning("waiting for the hand-over on %s failed: %r", self.channel, collector.exception())
        self.stats["taken_over"] += len(instances) - len(waiting)
        await asyncio.gather(*(leave(i, group, channel, discard) for i in instances
                               for (group, channel), discard in list(i.groups.items())))
        log.info("handed %d connection(s) on %s over to the next worker", len(instances), self.channel)

    async def close(self) -> None:
        """End every instance (the worker is stopping); wait at most :data:`END_TIMEOUT`
        for them, since an instance can swallow its cancellation (see there)."""
        tasks = [i.task for i in self.instances.values() if i.task is not None]
        for task in tasks:
            task.cancel()
        if self._acknowledgements:
            await asyncio.wait(list(self._acknowledgements), timeout=END_TIMEOUT)
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=END_TIMEOUT)
            if stuck:
                log.warning("%d application instance(s) on %s did not end when cancelled", len(stuck), self.channel)
