"""The engine under every communicator: one consumer instance on a private layer.

:class:`ConsumerHarness` runs a consumer as ``runworker`` runs it (one
instance serving one channel, an ``{"type": "channel"}`` scope) on an
in-memory layer of its own, and makes three things about it observable:

- **when it is done.** Every message the harness delivers, and every message
  sent to the consumer's own channel through the layer, is counted until the
  consumer's ``dispatch`` returns. Waiting for "the consumer finished" is
  waiting on that count, never a quiet period.
- **what went wrong.** ``GatewayConsumer.dispatch`` logs and counts a handler
  that raises; the harness keeps the exception and raises it again, with the
  handler's traceback, from the next thing the test awaits (or at exit).
- **what it sent.** Everything goes through the harness's layer, which checks
  each protocol message (``email.*``, ``mqtt.*``, ``slack.*``,
  ``websocket.*``) against its schema; an invalid one raises
  :class:`~gateways.core.specs.InvalidMessage` in the handler that sent it.

The consumer class is subclassed per harness, so ``stats`` counters start at
zero for each harness and never leak between tests.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import uuid
from typing import Any, Callable

import channels.db
from asgiref.testing import ApplicationCommunicator
from channels.layers import InMemoryChannelLayer, channel_layers

from consumers.testing.compat_asgiref import started_application
from gateways.core.specs import InvalidMessage, load_schema

#: Message type prefixes whose messages are checked against ``protocol_specs/<protocol>.schema.json``.
PROTOCOLS = ("email", "mqtt", "slack", "websocket")

#: Default upper bound, in seconds, on any wait (a consumer that hangs fails the test instead).
TIMEOUT = 5.0

__all__ = ["Communicator", "ConsumerHarness", "InvalidMessage", "NothingSent", "TestLayer", "check_message", "TIMEOUT"]


class NothingSent(AssertionError):
    """The consumer finished everything it was given without sending what the test waits for."""


def check_message(message: Any, where: str = "message") -> None:
    """Raise :class:`InvalidMessage` when ``message`` is a protocol message its schema rejects.

    Messages whose type is not ``<protocol>.<event>`` of a known protocol
    (``chat.message`` between consumers, say) are not checked.

    Args:
        message: the message.
        where: what it is, for the error (``"sent to 'slack.send'"``).
    """
    if not isinstance(message, dict):
        raise InvalidMessage(f"{where}: {type(message).__name__} is not a dict")
    mtype = message.get("type")
    protocol = mtype.partition(".")[0] if isinstance(mtype, str) else None
    if protocol not in PROTOCOLS:
        return
    problem = load_schema(protocol).problem(message)
    if problem is not None:
        raise InvalidMessage(f"{where}: {problem}")


class _ConnectionsKept:
    """Keeps ``channels.db.close_old_connections`` from closing database connections
    while a harness runs, as Channels' own ``ApplicationCommunicator`` does: under
    Django's ``TestCase`` the connection is inside the test's transaction, and
    closing it would break the test (and lose what the handler wrote)."""

    def __init__(self) -> None:
        self.users = 0
        self.original: Any = None

    def acquire(self) -> None:
        if self.users == 0:
            self.original = channels.db.close_old_connections
            channels.db.close_old_connections = lambda: None
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            channels.db.close_old_connections = self.original


_connections = _ConnectionsKept()


class _Signal:
    """Wakes every waiter whenever something changes (a send, a finished dispatch, an error)."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future] = []

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


class TestLayer(InMemoryChannelLayer):
    """The harness's in-memory layer: validates what is sent and tells the harness.

    Args:
        harness: the harness it belongs to.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, harness: "ConsumerHarness") -> None:
        super().__init__(capacity=100_000)
        self.harness = harness

    def _check(self, message: dict[str, Any], where: str) -> None:
        """Validate ``message`` against its schema (when the harness validates);
        an invalid one is recorded as the test's failure, then raised."""
        if self.harness.validate:
            try:
                check_message(message, where)
            except InvalidMessage as exc:
                self.harness._record(exc)
                raise

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Validate, then let the harness absorb it (group changes) or queue it."""
        self._check(message, f"sent to {channel!r}")
        if not await self.harness._absorb(channel, message):
            await super().send(channel, message)
            self.harness._sent_to(channel)
        self.harness._changed.notify()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Validate, then send to every member (each through :meth:`send`)."""
        self._check(message, f"sent to group {group!r}")
        await super().group_send(group, message)

    def take(self, channel: str) -> dict[str, Any] | None:
        """The next message queued on ``channel``, or None, without waiting."""
        queue = self.channels.get(channel)
        if queue is None or queue.empty():
            return None
        _, message = queue.get_nowait()
        if queue.empty():
            self.channels.pop(channel, None)
        return message

    def pending(self, channel: str) -> int:
        """How many messages are queued on ``channel``."""
        queue = self.channels.get(channel)
        return 0 if queue is None else queue.qsize()


class ConsumerHarness:
    """One consumer instance serving ``channel`` on its own validating in-memory layer.

    ::

        async with ConsumerHarness(EchoConsumer, "websocket.echo") as harness:
            reply_channel = await harness.new_reply_channel()
            await harness.deliver({...a websocket.receive...})
            answer = await harness.receive(reply_channel)

    Protocol communicators (:class:`~consumers.testing.WebSocketCommunicator`
    and the others) build on it; use it directly for messages they do not
    cover.

    Args:
        consumer_class: the consumer to run (a ``GatewayConsumer`` or any ``AsyncConsumer``).
        channel: the channel it serves (as in ``ChannelNameRouter``).
        timeout: upper bound, in seconds, on every wait.
        raise_errors: raise a handler's exception at the next await (default);
            when False they are only collected in :attr:`errors`.
        validate: check every protocol message sent and delivered against its schema.
    """

    __test__ = False

    def __init__(self, consumer_class: Any, channel: str = "test.channel", *, timeout: float = TIMEOUT,
                 raise_errors: bool = True, validate: bool = True) -> None:
        self.channel = channel
        self.timeout = timeout
        self.raise_errors = raise_errors
        self.validate = validate
        #: Every exception a handler raised (and every invalid message), in order.
        self.errors: list[BaseException] = []
        self._unraised: list[BaseException] = []
        self._changed = _Signal()
        self._delivered: dict[int, asyncio.Future] = {}
        self._from_layer = 0  # messages sent to the consumer's own channel, not dispatched yet
        self._running = 0
        self._instance: Any = None
        self._absorbers: list[Callable[[str, dict[str, Any]], Any]] = []
        self._closed = False
        self.layer = TestLayer(self)
        self.alias = f"consumer-harness-{uuid.uuid4().hex}"
        channel_layers.set(self.alias, self.layer)
        self.consumer_class = self._harnessed(consumer_class)
        _connections.acquire()
        self.communicator = ApplicationCommunicator(self.consumer_class.as_asgi(),
                                                    {"type": "channel", "channel": channel})

    # -- the consumer subclass ----------------------------------------------------

    def _harnessed(self, consumer_class: Any) -> type:
        """A subclass of ``consumer_class`` on the private layer, with its own ``stats``,
        that reports each dispatch's end and each handler's exception to the harness."""
        harness = self

        async def __call__(consumer: Any, scope: dict, receive: Any, send: Any) -> Any:
            harness._instance = consumer
            return await super(harnessed, consumer).__call__(scope, receive, send)

        async def dispatch(consumer: Any, message: dict[str, Any]) -> None:
            done = harness._delivered.pop(id(message), None)
            if done is None and harness._from_layer:
                harness._from_layer -= 1
            harness._running += 1
            try:
                await super(harnessed, consumer).dispatch(message)
            except Exception as exc:  # a consumer without GatewayConsumer's safety net
                harness._record(exc, message)
            finally:
                harness._running -= 1
                if done is not None and not done.done():
                    done.set_result(None)
                harness._changed.notify()

        async def handler_failed(consumer: Any, context: Any) -> None:
            # Called by GatewayConsumer.dispatch inside its ``except``: the handler's
            # exception (and traceback) is the one being handled.
            exc = sys.exc_info()[1]
            if exc is not None:
                harness._record(exc, getattr(context, "message", None))
            parent = getattr(super(harnessed, consumer), "handler_failed", None)
            if parent is not None:
                await parent(context)

        namespace: dict[str, Any] = {
            "channel_layer_alias": self.alias,
            "stats": collections.Counter(),  # this harness's own counters
            "__call__": __call__,
            "dispatch": dispatch,
            "handler_failed": handler_failed,
            "__module__": consumer_class.__module__,
            "__qualname__": consumer_class.__qualname__,
        }
        if "recent_ids" in dir(consumer_class):  # EmailConsumer's redelivery memory, also per class
            namespace["recent_ids"] = collections.OrderedDict()
        harnessed = type(consumer_class.__name__, (consumer_class,), namespace)
        return harnessed

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> "ConsumerHarness":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.close(check=exc_type is None)

    async def close(self, check: bool = True) -> None:
        """Wait for the consumer to finish what it was given, stop it, forget the layer.

        Args:
            check: raise a handler's exception nobody saw yet (and a timeout if
                the consumer never finished).
        """
        if self._closed:
            return
        self._closed = True
        try:
            if check:
                await self.idle()
        finally:
            future = self.communicator.future
            future.cancel()
            try:
                await future
            except (asyncio.CancelledError, Exception):
                pass
            channel_layers.backends.pop(self.alias, None)
            _connections.release()

    # -- state ------------------------------------------------------------------------

    @property
    def stats(self) -> collections.Counter:
        """This harness's counters (``handled``, ``failed``, ``unhandled``, ...)."""
        return self.consumer_class.stats

    @property
    def busy(self) -> bool:
        """Whether a delivered message is waiting or being handled."""
        return bool(self._delivered or self._running or self._from_layer)

    def _record(self, exc: BaseException, message: dict[str, Any] | None = None) -> None:
        if any(exc is seen for seen in self.errors):
            return
        what = f" handling {message.get('type')!r}" if isinstance(message, dict) else ""
        exc.add_note(f"(raised in {self.consumer_class.__qualname__}{what}; re-raised by consumers.testing)")
        self.errors.append(exc)
        if self.raise_errors:
            self._unraised.append(exc)
        self._changed.notify()

    def check(self) -> None:
        """Raise the first handler exception not raised yet, and a crash of the instance."""
        if self._unraised:
            exc = self._unraised.pop(0)
            raise exc
        future = started_application(self.communicator)
        if future is not None and future.done() and not future.cancelled():
            exc = future.exception()
            if exc is not None:
                raise exc

    def _start(self) -> None:
        """Start the instance (once), and hear of it if it ever stops."""
        if started_application(self.communicator) is None:
            self.communicator.future.add_done_callback(lambda _: self._changed.notify())

    # -- input ---------------------------------------------------------------------------

    async def new_reply_channel(self) -> str:
        """A reply channel on the harness's layer, as a gateway would make."""
        return await self.layer.new_channel()

    async def deliver(self, message: dict[str, Any], validate: bool = True) -> asyncio.Future:
        """Hand ``message`` to the consumer as if it arrived on its channel.

        Returns a future that is done once the consumer has handled it.
        Raises :class:`InvalidMessage` if the message breaks its schema
        (``validate=False`` delivers it anyway: a test of bad input).
        """
        self.check()
        if self.validate and validate:
            check_message(message, "delivered")
        message = {**message}  # its own object: the harness knows it by identity until dispatched
        done = asyncio.get_running_loop().create_future()
        self._delivered[id(message)] = done
        self._start()
        await self.communicator.send_input(message)
        return done

    async def handle(self, message: dict[str, Any]) -> None:
        """Deliver ``message`` and wait until the consumer has handled it."""
        done = await self.deliver(message)
        await self.wait_for(done.done, f"{self.consumer_class.__name__} to handle {message.get('type')!r}")

    async def send_to_consumer(self, message: dict[str, Any]) -> None:
        """Send ``message`` to the consumer's own ``channel_name`` through the layer
        (as a gateway answers a request whose ``reply_channel`` named it)."""
        await self.wait_for(lambda: self._instance is not None and hasattr(self._instance, "channel_name"),
                            "the consumer to start")
        await self.layer.send(self._instance.channel_name, message)

    # -- waiting -------------------------------------------------------------------------

    async def wait_for(self, condition: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        """Wait until ``condition()`` is truthy (checked on every change); return its value.

        Raises a handler's exception as soon as there is one, and TimeoutError
        after ``timeout`` (the harness's by default).
        """
        loop = asyncio.get_running_loop()
        timeout = self.timeout if timeout is None else timeout
        deadline = loop.time() + timeout
        self._start()
        while True:
            self.check()
            value = condition()
            if value:
                return value
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"waited {timeout}s for {what}")
            try:
                await self._changed.wait(left)
            except asyncio.TimeoutError:
                pass  # the deadline: checked at the top

    async def idle(self) -> None:
        """Wait until the consumer has handled every message it was given."""
        await self.wait_for(lambda: not self.busy, f"{self.consumer_class.__name__} to finish")
        self.check()

    async def receive(self, channel: str, match: Callable[[dict[str, Any]], bool] | None = None,
                      timeout: float | None = None) -> dict[str, Any]:
        """The next message the consumer sent to ``channel``.

        Fails with :class:`NothingSent` as soon as the consumer has handled
        everything and nothing is queued there (no waiting out a timeout).
        """

        def ready() -> Any:
            if self.layer.pending(channel):
                return True
            if not self.busy:
                raise NothingSent(f"{self.consumer_class.__name__} handled everything it was given "
                                  f"and sent nothing (more) to {channel!r}")
            return False

        await self.wait_for(ready, f"a message on {channel!r}", timeout)
        message = self.layer.take(channel)
        assert message is not None
        return message

    async def receive_nothing(self, channel: str, timeout: float | None = None) -> bool:
        """True when the consumer, done with everything it was given, sent nothing to ``channel``."""
        await self.wait_for(lambda: not self.busy, f"{self.consumer_class.__name__} to finish", timeout)
        self.check()
        return self.layer.pending(channel) == 0

    # The names of the harness before the kit (kept for existing tests).
    async def sent(self, channel: str, timeout: float | None = None) -> dict[str, Any]:
        """Same as :meth:`receive`."""
        return await self.receive(channel, timeout=timeout)

    async def nothing_sent(self, channel: str, wait: float | None = None) -> bool:
        """Same as :meth:`receive_nothing`."""
        return await self.receive_nothing(channel, wait)

    # -- hooks for communicators -----------------------------------------------------------

    def add_absorber(self, absorber: Callable[[str, dict[str, Any]], Any]) -> None:
        """Let ``absorber(channel, message)`` take sent messages before they are queued;
        it returns True (or an awaitable of True) for a message it consumed."""
        self._absorbers.append(absorber)

    async def _absorb(self, channel: str, message: dict[str, Any]) -> bool:
        for absorber in self._absorbers:
            taken = absorber(channel, message)
            if asyncio.iscoroutine(taken):
                taken = await taken
            if taken:
                return True
        return False

    def _sent_to(self, channel: str) -> None:
        instance = self._instance
        if instance is not None and getattr(instance, "channel_name", None) == channel:
            self._from_layer += 1


class Communicator:
    """What every protocol communicator shares: a harness, owned or shared.

    Args:
        consumer: a consumer class (the communicator runs it on a harness of its
            own) or a :class:`ConsumerHarness` / another communicator to share.
        channel: the channel the consumer serves (when it is a class).
        timeout: upper bound, in seconds, on every wait.
        raise_errors: see :class:`ConsumerHarness`.
    """

    __test__ = False
    default_channel = "test.channel"

    def __init__(self, consumer: Any, channel: str | None = None, *, timeout: float = TIMEOUT,
                 raise_errors: bool = True) -> None:
        if isinstance(consumer, Communicator):
            consumer = consumer.harness
        if isinstance(consumer, ConsumerHarness):
            self.harness = consumer
            self._owns_harness = False
        else:
            self.harness = ConsumerHarness(consumer, channel or self.default_channel, timeout=timeout,
                                           raise_errors=raise_errors)
            self._owns_harness = True

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._owns_harness:
            await self.harness.close(check=exc_type is None)

    @property
    def stats(self) -> Any:
        """The harness's counters (``handled``, ``failed``, ``unhandled``, ...)."""
        return self.harness.stats

    @property
    def layer(self) -> Any:
        """The harness's in-memory layer."""
        return self.harness.layer

    @property
    def errors(self) -> list[BaseException]:
        """Every exception a handler raised so far."""
        return self.harness.errors

    async def idle(self) -> None:
        """Wait until the consumer has handled everything it was given."""
        await self.harness.idle()

    async def close(self) -> None:
        """Stop the harness if this communicator owns it (``async with`` does it)."""
        if self._owns_harness:
            await self.harness.close()


class GatewayCommunicator(Communicator):
    """A communicator for a gateway that takes consumers' requests on one channel.

    Args:
        consumer: the consumer class, or a harness/communicator to share.
        channel: the channel the gateway sends to.
        send_channel: the gateway's outbound channel (``default_send_channel``).
        timeout: upper bound, in seconds, on every wait.
        raise_errors: see :class:`ConsumerHarness`.
    """

    default_send_channel = "test.send"

    def __init__(self, consumer: Any, channel: str | None = None, *, send_channel: str | None = None,
                 timeout: float = TIMEOUT, raise_errors: bool = True) -> None:
        super().__init__(consumer, channel, timeout=timeout, raise_errors=raise_errors)
        self.send_channel = send_channel or self.default_send_channel

    async def receive_nothing(self, timeout: float | None = None) -> bool:
        """True when the consumer, done with everything it was given, sent the gateway nothing."""
        return await self.harness.receive_nothing(self.send_channel, timeout)
