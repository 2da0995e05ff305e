"""Fixtures shared by every test package: real servers started per test session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "example"))

from servers import MosquittoServer, RedisServer  # noqa: E402


def _configure_django() -> None:
    """Django for every in-process test: the demo project's settings with an
    in-memory layer and a throwaway database.

    Django can be configured once per process, so it happens here, before any
    test module could configure it its own way; and without leaving
    ``DJANGO_SETTINGS_MODULE`` or layer variables in the environment, which
    the daemons a test starts would inherit.
    """
    from django.conf import settings

    if settings.configured:
        return
    temporary = {"GATEWAY_LAYER_URL": "memory://",
                 "DEMO_DATABASE": str(Path(tempfile.mkdtemp(prefix="demo-db-")) / "db.sqlite3")}
    saved = {key: os.environ.get(key) for key in temporary}
    os.environ.update(temporary)
    try:
        import demo.settings as demo
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    settings.configure(**{name: getattr(demo, name) for name in dir(demo) if name.isupper()})
    import django

    django.setup()


_configure_django()


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


# -- tiers ---------------------------------------------------------------------
#
# Every test is in exactly one tier, selected with ``pytest -m unit|integration|e2e``:
#
# - unit: no sockets, no subprocesses, no servers (the sans-I/O modules); seconds in all.
# - integration: real servers (redis-server, mosquitto) or daemons run in this process,
#   but no gateway or worker subprocess.
# - e2e: starts real gateway and worker processes.
#
# A module or test may say its tier with a marker (``pytestmark = pytest.mark.e2e``);
# one that says none is integration when it uses a server fixture and unit otherwise,
# and a unit test that opens a socket or starts a process fails (``_unit_tier_guard``)
# so that it is marked as what it is.

TIERS = ("unit", "integration", "e2e")
#: Fixtures that start a real server (``standin``: the Slack stand-in of tests/slack);
#: a test using one, directly or through another fixture, is at least an integration test.
SERVER_FIXTURES = frozenset({"redis_server", "private_redis", "mosquitto", "standin"})
#: Fixtures that start a gateway or worker process.
PROCESS_FIXTURES = frozenset({"email_gateway"})


def tier_of(item: pytest.Item) -> str:
    """The tier ``item`` is in: its marker's, else what its fixtures say."""
    marked = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
    if len(marked) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(sorted(marked))}: one tier only")
    if marked:
        return marked.pop()
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & PROCESS_FIXTURES:
        return "e2e"
    if fixtures & SERVER_FIXTURES:
        return "integration"
    return "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(tier)


class TierViolation(RuntimeError):
    """A test did what its tier rules out (see the tiers above).

    Not an OSError, so retry loops in the code under test do not swallow it."""


@pytest.fixture(autouse=True)
def _tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Fail a unit test that connects or binds a socket or starts a process, and
    an integration test that starts a gateway or worker process (``servers.Daemon``).

    Catches what goes through Python's socket and subprocess modules (the asyncio
    event loop included; uvloop's own sockets are out of its reach). A violation
    fails the test even if the code under test caught the exception.
    """
    if request.node.get_closest_marker("unit") is not None:
        tier, allowed = "unit", "uses no sockets and starts no processes; mark it integration or e2e"
    elif request.node.get_closest_marker("integration") is not None:
        tier, allowed = "integration", "starts no gateway or worker process; mark it e2e"
    else:
        yield
        return
    violations: list[str] = []

    def refuse(what: str, argument: int):
        # ``argument``: which positional argument names the target (an address, a command).
        def guard(*args, **kwargs):
            used = f"{what}({args[argument]!r})" if len(args) > argument else what
            violations.append(used)
            raise TierViolation(f"{tier} test {request.node.nodeid} used {used}: a {tier} test {allowed} "
                                "(see tests/conftest.py)")
        return guard

    if tier == "unit":
        import socket as socket_module
        import subprocess

        for method in ("connect", "connect_ex", "bind"):
            monkeypatch.setattr(socket_module.socket, method, refuse(f"socket.{method}", 1))
        monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse("subprocess", 1))
        for name in ("system", "fork", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                monkeypatch.setattr(os, name, refuse(f"os.{name}", 0))
    else:
        import servers

        monkeypatch.setattr(servers.Daemon, "__init__", refuse("Daemon", 2))
    yield
    if violations:
        pytest.fail(f"{tier} test used {'; '.join(violations)}: a {tier} test {allowed}", pytrace=False)
