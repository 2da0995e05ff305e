"""What ``gateway worker`` does with a message whose consumer raised.

A lane (:mod:`gateways.core.lanes`) retries the message by the channel's
:class:`~gateways.core.config.RetryConfig`, holding the message's
conversation meanwhile. When it gives up — the last attempt failed, or the
consumer raised :class:`consumers.failures.PermanentFailure` — it hands a
:class:`Failure` to a :class:`DeadLetters`, which:

1. adds the message to the dead-letter store with the exception and its
   traceback, and logs one ERROR line naming the entry;
2. *settles* the message with the gateway that sent it, when the protocol's
   spec asks for that (email: ``email.ack``, so the gateway stops handing it
   again): a dead-lettered message is done with, as a handled one is. The
   lane does this before the message leaves its in-flight set, so that a
   redelivery arriving until then is dropped as a duplicate; one that the
   gateway sent before it got the settling message and that arrives later
   is recognised by its ``id`` and a larger ``attempt`` (the hand-off count
   a redelivering gateway puts in its messages) and dropped too. A replay
   from the dead letters (``gateway dead-letters retry``) carries the stored
   message, its ``attempt`` unchanged, so it is handled.

When the store cannot be reached the message is not settled (a gateway
that redelivers then hands it again later) and an ERROR line carries the
channel, the message's id, the consumer's traceback and the store's error:
nothing is dropped without a trace.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable

from consumers.failures import PermanentFailure
from gateways.core.deadletters import describe_error
from gateways.core.describe import describe

log = logging.getLogger("gateway.worker")

#: How many settled messages a channel remembers, to recognise late redeliveries.
RECENT_SETTLED = 10_000
#: Seconds a dead-letter store may take to take an entry before the worker logs it instead.
STORE_TIMEOUT = 10.0

#: The message a protocol's gateway wants once a message is done with:
#: ``(channel, message)``, or ``None`` when the protocol needs none.
Settle = Callable[[dict[str, Any]], "tuple[str, dict[str, Any]] | None"]


@dataclass
class Failure:
    """A message whose consumer failed, and how often.

    Args:
        channel: the channel it came from.
        message: the message as received.
        conversation: its conversation (see :mod:`gateways.core.lanes`).
        attempts: the tries made so far, the failed ones included.
        first_failure: when the first try failed (Unix time).
        last_failure: when the last one failed.
        exception: what the last one raised.
    """

    channel: str
    message: dict[str, Any]
    conversation: Hashable | None
    attempts: int = 0
    first_failure: float = 0.0
    last_failure: float = 0.0
    exception: BaseException | None = None

    def failed(self, exception: BaseException) -> None:
        """Count one more failed try that raised ``exception``."""
        now = time.time()
        self.attempts += 1
        self.first_failure = self.first_failure or now
        self.last_failure = now
        self.exception = exception

    @property
    def permanent(self) -> bool:
        """The consumer said no retry can help."""
        return isinstance(self.exception, PermanentFailure)

    @property
    def error(self) -> str:
        """The dead-letter entry's ``error``: ``Type: text``, then the traceback (and causes)."""
        return describe_error(self.exception).rstrip() if self.exception is not None else ""

    @property
    def summary(self) -> str:
        """``Type: message`` of the last exception, on one line."""
        exc = self.exception
        return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300] if exc is not None else "?"


def message_id(message: dict[str, Any]) -> str | int | None:
    """The message's ``id`` when it can identify it (a string or an integer)."""
    value = message.get("id")
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "" else None


def protocol_of(message: dict[str, Any]) -> str:
    """The protocol a message belongs to: its type's prefix (``mqtt.publish``: ``mqtt``)."""
    mtype = message.get("type")
    return mtype.partition(".")[0] if isinstance(mtype, str) and "." in mtype else "channel"


@dataclass
class DeadLetters:
    """Where ``gateway worker`` puts the messages it gives up.

    Args:
        store: a dead-letter store (``add(...)`` returns the entry's id), or
            ``None`` when none could be made: then each give-up is an ERROR line.
        layer: the layer settling messages are sent through.
        settle: the settling message of a given-up message (``None``: none).
    """

    store: Any | None
    layer: Any | None = None
    settle: Settle | None = None
    #: channel -> {message id: its ``attempt``} of the messages settled lately.
    settled: dict[str, collections.OrderedDict] = field(default_factory=dict)
    _settling: set[asyncio.Task] = field(default_factory=set)

    async def give_up(self, failure: Failure) -> None:
        """Store ``failure``'s message, log it, settle it with its gateway."""
        what = f"{describe(failure.message)} (conversation {failure.conversation})"
        reason = "a PermanentFailure" if failure.permanent else f"{failure.attempts} attempt(s)"
        entry = None
        if self.store is not None:
            try:
                entry = await asyncio.wait_for(self.store.add(
                    protocol=protocol_of(failure.message), channel=failure.channel, message=failure.message,
                    error=failure.error, attempts=failure.attempts, first_failure=failure.first_failure,
                    last_failure=failure.last_failure, direction="inbound"), STORE_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - whatever the store raised, the message is logged
                log.error("consumer on %s gave up %s after %s; the dead-letter store failed (%s: %s), so this "
                          "log line is the only record of it (id %s):\n%s", failure.channel, what, reason,
                          type(exc).__name__, exc, message_id(failure.message), failure.error)
                return
        if entry is None:
            log.error("consumer on %s gave up %s after %s; no dead-letter store, so this log line is the "
                      "only record of it (id %s):\n%s", failure.channel, what, reason,
                      message_id(failure.message), failure.error)
            return
        log.error("consumer on %s gave up %s after %s; dead-lettered as %s:\n%s", failure.channel, what, reason,
                  entry, failure.error)
        self._remember(failure.channel, failure.message)
        await self._settle(failure.message)

    def late_redelivery(self, channel: str, message: dict[str, Any]) -> bool:
        """Whether ``message`` is a gateway's redelivery of one this worker
        dead-lettered and settled lately (same ``id``, larger ``attempt``):
        the caller drops it."""
        ident = message_id(message)
        earlier = self.settled.get(channel, {}).get(ident) if ident is not None else None
        attempt = message.get("attempt")
        if earlier is None or not isinstance(attempt, int) or attempt <= earlier:
            return False
        log.info("%s on %s is a redelivery of a message dead-lettered here; dropped and settled again",
                 describe(message), channel)
        task = asyncio.ensure_future(self._settle(message))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return True

    def _remember(self, channel: str, message: dict[str, Any]) -> None:
        ident = message_id(message)
        attempt = message.get("attempt")
        if ident is None or not isinstance(attempt, int) or self.settle is None or self.settle(message) is None:
            return  # nothing redelivers it
        settled = self.settled.setdefault(channel, collections.OrderedDict())
        settled[ident] = attempt
        while len(settled) > RECENT_SETTLED:
            settled.popitem(last=False)

    async def _settle(self, message: dict[str, Any]) -> bool:
        """Send the protocol's settling message; whether one was sent."""
        if self.settle is None or self.layer is None:
            return False
        try:
            settling = self.settle(message)
            if settling is None:
                return False
            await self.layer.send(*settling)
            return True
        except Exception as exc:  # noqa: BLE001 - the gateway hands it again; settled again then
            log.warning("could not settle dead-lettered %s with its gateway: %s: %s", describe(message),
                        type(exc).__name__, exc)
            return False


#: What a lane calls when it gives up a message.
GiveUp = Callable[[Failure], Awaitable[None]]
