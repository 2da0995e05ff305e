"""Consumers' requests waiting for the broker, in order, with a bound."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any

from gateways.mqtt.protocol import Request


@dataclass(eq=False)
class Pending:
    """A request from a consumer that the broker has not confirmed yet.

    Args:
        message: the consumer's message (for its ``id`` and ``reply_channel``).
        request: what it asks for.
        seq: its place in arrival order.
    """

    message: dict[str, Any]
    request: Request
    seq: int = 0


class RequestQueue:
    """A FIFO of :class:`Pending` requests holding at most ``maxsize`` new ones.

    Requests put back after a lost connection go to the front, in their
    original order, even past the bound: they were accepted already.

    Args:
        maxsize: requests held at most (while the broker is unreachable, say).
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: collections.deque[Pending] = collections.deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Pending) -> bool:
        """Append ``item``; False when the queue is full (the caller reports the failure)."""
        if len(self._items) >= self.maxsize:
            return False
        self._seq += 1
        item.seq = self._seq
        self._items.append(item)
        self._ready.set()
        return True

    def put_back(self, items: list[Pending]) -> None:
        """Return unconfirmed ``items`` to the front, oldest first."""
        for item in sorted(items, key=lambda p: p.seq, reverse=True):
            self._items.appendleft(item)
        if self._items:
            self._ready.set()

    async def room(self, timeout: float) -> None:
        """Wait until a request was taken out (there may be room now), at most ``timeout`` seconds."""
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def get(self) -> Pending:
        """The oldest request, waiting for one."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        self._room.set()
        return self._items.popleft()

    def take_all(self) -> list[Pending]:
        """Remove and return every waiting request."""
        items = list(self._items)
        self._items.clear()
        return items
