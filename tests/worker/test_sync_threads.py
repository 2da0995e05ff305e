"""Sync handlers and SQLite through a real `gateway worker` on real Redis.

By default every sync handler runs on the one thread-sensitive thread, as
under ``runworker``: many conversations writing to a SQLite file at once get
no ``database is locked`` and lose no row. ``django.parallel_sync: true``
gives each lane its own thread; the test proves they run at the same time
with a barrier only parallel threads can pass, and counts the threads.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from channels_redis.core import RedisChannelLayer

from gateways.core.config import ConfigError, parse_config
from servers import PYTHON, REPO
from test_worker_e2e import PROJECT, start_worker, write_config

pytestmark = pytest.mark.e2e


def migrate(config: Path, database: Path) -> None:
    """Create the test project's tables in ``database`` with Django's own migrate."""
    subprocess.run(
        [PYTHON, "-m", "django", "migrate", "wktest", "--noinput", "-v", "0"], check=True, cwd=REPO,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "wktest.settings", "GATEWAY_CONFIG": str(config),
             "DEMO_DATABASE": str(database),
             "PYTHONPATH": os.pathsep.join([str(PROJECT), str(REPO / "example")])},
    )


async def run_readings(redis_url: str, directory: Path, messages: list[dict], **django: object):
    """Send ``messages`` to ``worker.sqlite`` of a fresh worker; return (answers, rows, worker log)."""
    config, prefix, _port = write_config(directory, redis_url, **django)
    database = directory / "db.sqlite3"  # the name start_worker gives the worker
    await asyncio.to_thread(migrate, config, database)
    stock = RedisChannelLayer(hosts=[redis_url], prefix=prefix, capacity=10000)
    worker = start_worker(config, ["worker.sqlite"], directory)
    try:
        for message in messages:
            await stock.send("worker.sqlite", {"type": "reading", "reply_channel": "answers", **message})
        answers = [await asyncio.wait_for(stock.receive("answers"), 60) for _ in messages]
    finally:
        assert worker.stop() == 0
        await stock.close_pools()
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT conv, n, before, thread FROM wktest_reading").fetchall()
    return answers, rows, worker.log()


async def test_sync_handlers_share_one_thread_and_sqlite_loses_nothing(redis_server, tmp_path):
    conversations, per_conversation = 50, 8
    messages = [{"conv": f"c{c}", "n": n} for n in range(per_conversation) for c in range(conversations)]
    answers, rows, log = await run_readings(redis_server.url, tmp_path, messages)
    assert "database is locked" not in log
    assert [a for a in answers if a["type"] != "done"] == []
    assert sorted((conv, n) for conv, n, _before, _thread in rows) == sorted((m["conv"], m["n"]) for m in messages)
    # Each conversation in order: the row for n saw the n rows written before it.
    assert all(before == n for _conv, n, before, _thread in rows)
    assert len({thread for *_rest, thread in rows}) == 1
    assert "sync handlers on one thread" in log


async def test_parallel_sync_runs_handlers_of_different_conversations_in_parallel_threads(redis_server, tmp_path):
    # The first message of each of 4 conversations waits until all 4 are inside at
    # once: on one thread the first would wait alone and fail after 20 s. They leave
    # the database alone: four writers at once on SQLite is what the default avoids.
    messages = [{"conv": f"c{c}", "n": 0, "barrier": 4, "write": False} for c in range(4)]
    answers, _rows, log = await run_readings(redis_server.url, tmp_path, messages, parallel_sync=True)
    assert [a["type"] for a in answers] == ["done"] * 4, log
    assert len({a["thread"] for a in answers}) == 4
    assert "sync handlers in parallel" in log


def test_parallel_sync_must_be_a_boolean():
    text = "django:\n  settings: wktest.settings\n  parallel_sync: sometimes\n"
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gateway.yaml")
    assert str(raised.value) == "gateway.yaml:3: django.parallel_sync: expected boolean, got 'sometimes'"
    assert parse_config(text.replace("sometimes", "true")).django.parallel_sync is True
    assert parse_config(text.replace("  parallel_sync: sometimes\n", "")).django.parallel_sync is False
