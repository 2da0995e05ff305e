"""Exponential backoff with full jitter, for every reconnect loop."""

from __future__ import annotations

import asyncio
import random


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
