"""What the kit runs beside a gateway: a private redis-server, and waiting on conditions."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_until(predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 20.0,
                     what: str = "condition", interval: float = 0.05) -> Any:
    """Poll ``predicate`` (plain or async) until it returns something truthy,
    and return that; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout}s still not: {what}")
        await asyncio.sleep(interval)


async def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        _reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    return True


def require_binary(name: str, package: str) -> str:
    """Path of ``name``; fail under CI (``CI`` set), skip otherwise, when it is not installed."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found: install it with `apt-get install {package}`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class RedisServer:
    """A private redis-server without persistence, which can stop and start on its port."""

    def __init__(self) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="conformance-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The layer URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start and wait until it listens."""
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        await wait_until(lambda: port_open(self.port), 10, f"redis-server listening on {self.port}")

    def stop(self) -> None:
        """Stop it (the gateway then sees its layer down)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop it and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
