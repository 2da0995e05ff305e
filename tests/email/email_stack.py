"""The email test stack: a real gateway subprocess, a real aiosmtpd relay, layer access."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import yaml
from aiosmtpd.controller import Controller

from gateways.core.config import load_config
from gateways.core.layer import build_layer, close_layer
from servers import REPO, Daemon, free_port, listening_gateway


def write_config(directory: Path, redis_url: str, *, django: bool = False, layer: dict[str, Any] | None = None,
                 **overrides: Any) -> tuple[Path, int]:
    """A YAML file for one email gateway on a free port; returns its path and the port."""
    port = free_port()
    section = {
        "listen": f"127.0.0.1:{port}",
        "domains": ["demo.local"],
        "relay": "file://maildir",
        "spool": str(directory / f"spool-{port}"),
        "hostname": "gw.test",
        "grace_period": 5,
        "health": {"listen": f"127.0.0.1:{free_port()}"},
        "relay_retry_initial": 0.2,
        "relay_retry_max": 1.0,
        "relay_timeout": 10,
        **overrides,
    }
    config: dict[str, Any] = {"layer": {"url": redis_url, "prefix": f"t{uuid.uuid4().hex[:8]}", **(layer or {})},
                              "email": section}
    if django:
        config["django"] = {"settings": "demo.settings", "path": [str(REPO / "example")]}
    path = directory / f"email-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def start_gateway(config: Path, port: int) -> Daemon:
    """Start ``python -m gateways email`` and wait until it listens."""
    return listening_gateway("email", config, port)


class Layer:
    """The channel layer a config names, for a test acting as consumer."""

    def __init__(self, config: Path) -> None:
        self.layer = build_layer(load_config(config).layer)

    async def receive(self, channel: str, timeout: float = 30.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.layer.receive(channel), timeout)

    async def nothing_on(self, channel: str, wait: float) -> bool:
        try:
            await asyncio.wait_for(self.layer.receive(channel), wait)
        except asyncio.TimeoutError:
            return True
        return False

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self.layer.send(channel, message)

    async def close(self) -> None:
        await close_layer(self.layer)


class RelayHandler:
    """Collects what the relay accepts; answers ``fail`` codes first when told to."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail: list[str] = []
        self.received = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.fail:
            return self.fail.pop(0)
        with self.received:
            self.messages.append({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                                  "data": envelope.original_content})
            self.received.notify_all()
        return "250 2.0.0 relayed"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Block until ``count`` messages arrived; return them all."""
        with self.received:
            if not self.received.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"relay got {len(self.messages)} of {count} messages in {timeout}s")
            return list(self.messages)


class Relay:
    """A real aiosmtpd server standing in for the outbound relay.

    Args:
        port: where to listen (a free port by default), so it can start late.
    """

    def __init__(self, port: int | None = None, **controller_options: Any) -> None:
        self.port = port or free_port()
        self.handler = RelayHandler()
        self.controller: Controller | None = None
        self.options = controller_options

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> "Relay":
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **self.options)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
