"""Concurrent instances share Channels' ``aclose_old_connections`` runs, and
every caller still waits for a run that started after it called."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import SyncToAsync

from gateways.core.oldconnections import SharedClose


class Gated:
    """A stand-in for one run of close_old_connections, held open by a gate."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.gate = asyncio.Event()
        self.fail = False

    async def __call__(self) -> None:
        self.started.append(len(self.started) + 1)
        await self.gate.wait()
        self.gate.clear()
        if self.fail:
            raise RuntimeError("database gone (on purpose)")


async def until(predicate) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met")


async def test_callers_during_a_run_share_the_next_one():
    run = Gated()
    shared = SharedClose(run)
    first = asyncio.ensure_future(shared())
    await until(lambda: run.started == [1])
    later = [asyncio.ensure_future(shared()) for _ in range(10)]
    await until(lambda: True)
    run.gate.set()
    await asyncio.wait_for(first, 5)
    # The ten that came during run 1 are not served by it: they wait for run 2.
    assert not any(task.done() for task in later)
    await until(lambda: run.started == [1, 2])
    run.gate.set()
    await asyncio.wait_for(asyncio.gather(*later), 5)
    assert shared.runs == 2


async def test_a_failed_run_fails_its_callers():
    run = Gated()
    run.fail = True
    shared = SharedClose(run)
    callers = [asyncio.ensure_future(shared()) for _ in range(3)]
    await until(lambda: run.started == [1])
    run.gate.set()
    for caller in callers:
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(caller, 5)


async def test_thread_sensitive_contexts_do_not_share_runs():
    run = Gated()
    shared = SharedClose(run)

    async def in_context(marker: object) -> None:
        SyncToAsync.thread_sensitive_context.set(marker)
        await shared()

    tasks = [asyncio.ensure_future(in_context(object())) for _ in range(2)]
    await until(lambda: len(run.started) == 2)  # both run at once: one per context
    run.gate.set()  # wakes both waiting runs
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert shared.runs == 2
