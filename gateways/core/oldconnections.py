"""Channels' per-message ``close_old_connections`` hop, shared by concurrent instances.

Before every handler, Channels' ``AsyncConsumer.dispatch`` awaits
``aclose_old_connections()``: a hop to the sync thread to run Django's
``close_old_connections()`` there. With one instance per connection, as
``gateway worker`` runs stock consumers, that hop is most of the worker's
time per message (measured: 57 of 69 µs for an echo), and every instance
queues for the one sync thread to do the same idempotent thing.

:func:`install` replaces the name Channels' modules call with a version that
lets concurrent callers share one run: a caller waits for a run that *starts
after it called* (so each handler still runs after a fresh check of the
connections, as before), and callers that arrive while a run is in progress
are all served by the next one. Runs are kept apart per asgiref
thread-sensitive context, since each such context has its own sync thread
and its own database connections.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

#: The Channels modules that call ``aclose_old_connections`` by their own global name.
_MODULES = ("channels.consumer", "channels.generic.websocket", "channels.generic.http")


class SharedClose:
    """``aclose_old_connections`` whose concurrent callers share runs.

    Args:
        original: the coroutine function doing one run (Channels' own).
    """

    def __init__(self, original: Callable[[], Awaitable[Any]]) -> None:
        self.original = original
        self._running: dict[Any, asyncio.Future] = {}
        self._next: dict[Any, asyncio.Future] = {}
        self.runs = 0

    async def __call__(self) -> None:
        from asgiref.sync import SyncToAsync

        key = SyncToAsync.thread_sensitive_context.get(None)
        waiter = self._next.get(key)
        if waiter is None:
            waiter = self._next[key] = asyncio.get_running_loop().create_future()
            # The run copies this caller's context, so it runs on this caller's sync thread.
            asyncio.ensure_future(self._run(key, waiter))
        await asyncio.shield(waiter)

    async def _run(self, key: Any, waiter: asyncio.Future) -> None:
        running = self._running.get(key)
        if running is not None:  # callers of the next run came after this one started
            await asyncio.wait([running])
        if self._next.get(key) is waiter:
            del self._next[key]
        self._running[key] = waiter
        try:
            self.runs += 1
            await self.original()
        except asyncio.CancelledError:  # the worker is stopping
            waiter.cancel()
            raise
        except Exception as exc:
            waiter.set_exception(exc)
            waiter.exception()  # callers that left do not make it "never retrieved"
        else:
            waiter.set_result(None)
        finally:
            if self._running.get(key) is waiter:
                del self._running[key]


def install() -> SharedClose | None:
    """Make Channels' consumers share ``aclose_old_connections`` runs in this
    process; ``None`` (and nothing changed) when Channels does not have it."""
    import importlib

    from channels import db

    original = getattr(db, "aclose_old_connections", None)
    if original is None:
        return None
    if isinstance(original, SharedClose):
        return original
    shared = SharedClose(original)
    for name in _MODULES:
        module = importlib.import_module(name)
        if getattr(module, "aclose_old_connections", None) is original:
            module.aclose_old_connections = shared  # type: ignore[attr-defined]
    db.aclose_old_connections = shared  # type: ignore[attr-defined]
    return shared
