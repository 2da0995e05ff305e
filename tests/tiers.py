"""The three test tiers, selected with ``pytest -m unit|integration|e2e``.

- unit: no sockets, no subprocesses, no servers (the sans-I/O modules); seconds in all.
- integration: real servers (redis-server, mosquitto, the Slack stand-in), daemons
  run in the test's process, a command run to its end (``gateway check``); no
  gateway or worker process.
- e2e: starts real gateway and worker processes.

A module or test may say its tier with a marker (``pytestmark = pytest.mark.e2e``);
one that says none is integration when it uses a server fixture and unit otherwise
(tests/conftest.py applies :func:`tier_of` to every test). :func:`forbid` makes a
unit test that opens a socket or starts a process, and an integration test that
starts a gateway or worker process, fail, so that it gets marked as what it is.
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any, Callable

import pytest

TIERS = ("unit", "integration", "e2e")
#: Fixtures that start a real server (``standin``: the Slack stand-in of tests/slack);
#: a test using one, directly or through another fixture, is at least an integration test.
SERVER_FIXTURES = frozenset({"redis_server", "private_redis", "mosquitto", "standin"})
#: Fixtures that start a gateway or worker process.
PROCESS_FIXTURES = frozenset({"email_gateway"})
#: What each guarded tier rules out, and what to do about a test that did it.
ALLOWED = {
    "unit": "a unit test uses no sockets and starts no processes; mark it integration or e2e",
    "integration": "an integration test starts no gateway or worker process; mark it e2e",
}


class TierViolation(RuntimeError):
    """A test did what its tier rules out.

    Not an OSError, so retry loops in the code under test do not swallow it."""


def tier_of(item: pytest.Item) -> str:
    """The tier ``item`` is in: its marker's, else what its fixtures say.

    Raises:
        ValueError: it is marked with more than one tier.
    """
    marked = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
    if len(marked) > 1:
        raise ValueError(f"{item.nodeid} is marked {' and '.join(sorted(marked))}: one tier only")
    if marked:
        return marked.pop()
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & PROCESS_FIXTURES:
        return "e2e"
    if fixtures & SERVER_FIXTURES:
        return "integration"
    return "unit"


def forbid(tier: str, nodeid: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make what ``tier`` rules out raise :class:`TierViolation` until ``monkeypatch``
    is undone; return the list each violation is recorded in.

    For unit: connecting or binding a socket, starting a process, through Python's
    socket, subprocess and os modules (the asyncio event loop included; uvloop's own
    sockets are out of reach). For integration: ``servers.Daemon``, which starts
    every gateway and worker process of the tests.
    """
    violations: list[str] = []

    def refuse(what: str, argument: int) -> Callable[..., Any]:
        # ``argument``: which positional argument names the target (an address, a command).
        def guard(*args: Any, **kwargs: Any) -> Any:
            used = f"{what}({args[argument]!r})" if len(args) > argument else what
            violations.append(used)
            raise TierViolation(f"{tier} test {nodeid} used {used}: {ALLOWED[tier]} (see tests/tiers.py)")
        return guard

    if tier == "unit":
        for method in ("connect", "connect_ex", "bind"):
            monkeypatch.setattr(socket.socket, method, refuse(f"socket.{method}", 1))
        monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse("subprocess", 1))
        for name in ("system", "fork", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                monkeypatch.setattr(os, name, refuse(f"os.{name}", 0))
    elif tier == "integration":
        import servers

        monkeypatch.setattr(servers.Daemon, "__init__", refuse("Daemon", 2))
    return violations
