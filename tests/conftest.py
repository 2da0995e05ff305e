"""Fixtures shared by every test package: real servers started per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "example"))

from servers import MosquittoServer, RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the whole session; tests isolate by key prefix."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def private_redis():
    """A redis-server of this test's own, for tests that stop and restart it."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def mosquitto():
    """A Mosquitto broker of this test's own."""
    server = MosquittoServer().start()
    yield server
    server.close()
