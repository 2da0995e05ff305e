"""Real servers for tests: redis-server and mosquitto on free loopback ports.

A test that needs a server and cannot find its binary fails under CI
(``CI`` set) and skips locally with a message naming the package to install.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from gateways.conformance.servers import free_port
from gateways.conformance.servers import wait_until as kit_wait_until


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
            time.sleep(0.05)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Tests wait on the condition they need instead of sleeping a fixed time:
    fast when the machine is fast, patient when it is loaded. Fails with
    ``what`` (say what should have happened) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout}s still not: {what}")
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0,
                           what: str = "condition", interval: float = 0.05) -> Any:
    """:func:`wait_until` for async tests: ``predicate`` may be a plain or an
    async function, and the event loop keeps running between polls (the
    conformance kit's wait, with the suite's default timeout)."""
    return await kit_wait_until(predicate, timeout, what, interval)


async def wait_for_group(url: str, prefix: str, group: str, members: int, timeout: float = 20.0) -> None:
    """Wait until the layer group ``group`` (under ``prefix`` in the Redis at
    ``url``) has ``members`` channels: a consumer joins a group with a message
    it sends after accept, so a connection being open does not mean it joined."""
    from redis import asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        await async_wait_until(lambda: _has_members(client, f"{prefix}:group:{group}", members), timeout,
                               f"{members} channels in group {group!r}")
    finally:
        await client.aclose()


async def _has_members(client: Any, key: str, members: int) -> bool:
    return await client.zcard(key) == members


def child_pids(pid: int) -> list[int]:
    """The live child processes of process ``pid`` (from /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:  # the thread ended meanwhile
            continue
    return found


def require_binary(name: str, package: str) -> str:
    """Path of ``name``; fail in CI, skip locally, when it is not installed."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found: install it with `apt-get install {package}` (or run .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class _Process:
    """A server process that can be stopped and started again on the same port."""

    name = "server"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "_Process":
        self.proc = subprocess.Popen(
            self.command(), cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_Process):
    """A private redis-server (no persistence) on its own port."""

    name = "redis"

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        super().__init__(port)

    def command(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class MosquittoServer(_Process):
    """A private Mosquitto broker with persistence, so restarts keep sessions."""

    name = "mosquitto"

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_binary("mosquitto", "mosquitto")
        super().__init__(port)

    def command(self) -> list[str]:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "max_queued_messages 100000\n"
            # Started as root, Mosquitto drops to the `mosquitto` user, which cannot
            # write this private directory, and persistence would silently do nothing.
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        return [self.binary, "-c", str(conf)]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


REPO = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("GATEWAY_TEST_PYTHON") or __import__("sys").executable


class Daemon:
    """A project process (``gateway ...`` or ``manage.py runworker``) with its log.

    Args:
        name: used in the log file name and in failure messages.
        argv: the command.
        env: extra environment variables.
        cwd: working directory (the repository by default).
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        # Settings in this process's environment (from in-process Django tests) are
        # not the daemon's: it gets what its config file and ``env`` say.
        inherited = {k: v for k, v in os.environ.items()
                     if k not in ("GATEWAY_LAYER_URL", "GATEWAY_CONFIG", "DJANGO_SETTINGS_MODULE")}
        self.proc = subprocess.Popen(
            argv, cwd=cwd or REPO, stdout=self._log, stderr=subprocess.STDOUT,
            env={**inherited, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        """Block until ``text`` appears in the log; fail with the log if the process dies."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {text!r} after {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, return the exit code (kill after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def gateway_daemon(protocol: str, config: Path, env: dict[str, str] | None = None) -> Daemon:
    """Start ``python -m gateways <protocol> --config <config>`` with strict schema checks."""
    return Daemon(protocol, [PYTHON, "-m", "gateways", protocol, "--config", str(config)],
                  env={"GATEWAY_STRICT": "1", **(env or {})})


def runworker(config: Path, channels: list[str], settings: str = "demo.settings",
              pythonpath: list[Path] | None = None, env: dict[str, str] | None = None) -> Daemon:
    """Start Django's ``runworker`` for ``channels`` against the layer in ``config``."""
    paths = [str(p) for p in (pythonpath or [])] + [str(REPO / "example")]
    return Daemon("runworker", [PYTHON, "-m", "django", "runworker", *channels], env={
        "DJANGO_SETTINGS_MODULE": settings,
        "GATEWAY_CONFIG": str(config),
        "DEMO_DATABASE": str(Path(tempfile.mkdtemp(prefix="demo-db-")) / "db.sqlite3"),
        "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    })


def listening_gateway(protocol: str, config: Path, port: int, timeout: float = 30.0) -> Daemon:
    """Start ``gateway <protocol>`` and wait until it listens on ``port``; fail with its log."""
    daemon = gateway_daemon(protocol, config)
    try:
        wait_for_port(port, timeout=timeout)
    except TimeoutError:
        daemon.stop()
        raise AssertionError(f"{protocol} gateway did not listen:\n{daemon.log()}")
    return daemon
