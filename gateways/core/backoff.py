"""Exponential backoff with full jitter, for every reconnect and receive loop."""

from __future__ import annotations

import asyncio
import random
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, randomised.

    Args:
        initial: the first delay's upper bound, in seconds.
        maximum: the largest delay's upper bound.
    """

    def __init__(self, initial: float = 0.1, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the bound."""
        bound = min(self.maximum, self.initial * (2 ** self.attempts))
        self.attempts += 1
        return random.uniform(bound / 2, bound)

    async def wait(self) -> None:
        """Sleep for :meth:`next_delay`."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        """Start again from ``initial`` after a success."""
        self.attempts = 0


async def receive_with_backoff(receive: Callable[[], Awaitable[T]], backoff: Backoff,
                               layer_errors: tuple[type[BaseException], ...],
                               on_layer_error: Callable[[BaseException], None],
                               on_error: Callable[[BaseException], None]) -> T:
    """What ``receive()`` returns, calling it again after each failure, ``backoff`` apart.

    Args:
        receive: one receive from the layer.
        backoff: the delays between attempts; reset by a success.
        layer_errors: the errors that mean the layer is unreachable.
        on_layer_error: told of each of those (the layer is down).
        on_error: told of any other failure (a message that does not deserialize, say).
    """
    while True:
        try:
            received = await receive()
        except layer_errors as exc:
            on_layer_error(exc)
        except Exception as exc:  # noqa: BLE001 - reported, and the loop goes on
            on_error(exc)
        else:
            backoff.reset()
            return received
        await backoff.wait()
