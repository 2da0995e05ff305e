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
from tiers import ALLOWED, forbid, tier_of  # noqa: E402


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


# -- tiers (tests/tiers.py) ------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test its one tier (``pytest -m unit|integration|e2e``)."""
    conflicts = []
    for item in items:
        try:
            tier = tier_of(item)
        except ValueError as exc:
            conflicts.append(str(exc))
            continue
        if item.get_closest_marker(tier) is None:
            item.add_marker(tier)
    if conflicts:
        raise pytest.UsageError("tests in more than one tier:\n" + "\n".join(conflicts))


@pytest.fixture(autouse=True)
def _tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Fail a test that does what its tier rules out, even if the code under test
    caught the exception (the violations are on ``request.node.tier_violations``)."""
    tier = next((name for name in ("unit", "integration") if request.node.get_closest_marker(name)), None)
    if tier is None:
        yield
        return
    violations = request.node.tier_violations = forbid(tier, request.node.nodeid, monkeypatch)
    yield
    if violations:
        pytest.fail(f"{tier} test used {'; '.join(violations)}: {ALLOWED[tier]}", pytrace=False)
