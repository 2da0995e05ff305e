"""The two halves of a conformance run: the :class:`Driver` a gateway writes,
and the :class:`Harness` the kit gives it (the gateway process, its private
layer, its health endpoint)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import yaml

import protocol_specs
from gateways.conformance.servers import RedisServer, free_port, wait_until
from gateways.core import registry
from gateways.core.config import Config, load_config
from gateways.core.layer import build_layer, close_layer
from gateways.core.specs import ProtocolSchema, load_schema

_SAMPLE = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Driver:
    """How the kit works one protocol: subclass it in the gateway's tests.

    One instance serves one test, so it may keep clients and servers on
    ``self`` between :meth:`produce` and :meth:`observe`.

    Class attributes:
        protocol: the registered protocol name (``gateway <protocol>``).
        grace_period: the section's ``grace_period`` in the kit's runs.
    """

    protocol: ClassVar[str]
    grace_period: ClassVar[float] = 5.0

    async def setup(self, harness: Harness) -> None:
        """Start what the protocol needs beside the gateway (a broker, a relay)."""

    async def teardown(self) -> None:
        """Stop what :meth:`setup` started and close the clients."""

    def section(self, harness: Harness) -> dict[str, Any]:
        """The protocol's section (as YAML data); the kit adds ``health`` and
        ``grace_period``. Use :meth:`Harness.free_port` for ports."""
        raise NotImplementedError

    def environment(self, harness: Harness) -> dict[str, str]:
        """Environment variables for the gateway process."""
        return {}

    async def ready(self, harness: Harness) -> None:
        """Wait until the gateway takes protocol events (the kit already saw /healthz answer)."""

    async def produce(self, harness: Harness) -> None:
        """Make one inbound protocol event, as a client of the gateway would.

        Return once the gateway has taken it the protocol's way (a reply, an
        acknowledgement), or once it is sent when the layer is full: the kit
        calls this while the layer refuses messages too, and cancels a call
        that is still waiting after the check.
        """
        raise NotImplementedError

    def reply(self, received: dict[str, Any], channel: str) -> tuple[str, dict[str, Any]]:
        """A valid consumer message answering ``received`` (which came on
        ``channel``): the channel to send it on, and the message."""
        raise NotImplementedError

    async def observe(self, harness: Harness, reply: dict[str, Any]) -> None:
        """Wait until the protocol action ``reply`` causes is seen; fail when
        it is not (use :meth:`Harness.wait_until`)."""
        raise NotImplementedError

    def invalid_reply(self, received: dict[str, Any], channel: str) -> tuple[str, dict[str, Any]]:
        """A consumer message the schema refuses, where :meth:`reply` sends
        (by default the valid reply with every value but ``type`` made a map)."""
        target, message = self.reply(received, channel)
        return target, {key: value if key == "type" else {"invalid": True} for key, value in message.items()}

    async def observe_invalid(self, harness: Harness, invalid: dict[str, Any]) -> None:
        """Wait until the protocol's answer to an invalid consumer message is
        seen (the kit already saw it counted); by default nothing more."""

    async def observe_refusal(self, harness: Harness) -> None:
        """Wait until the protocol's refusal of an event the full layer did not
        take is seen (the kit already saw it counted), or, for a protocol
        that holds such an event instead, that it arrives once the layer has
        room (:meth:`Harness.receive` makes room); by default nothing more."""


class Harness:
    """One gateway process under test with its private redis-server.

    Args:
        driver: the protocol's driver.
        directory: a directory of this test's own (config, logs).
    """

    def __init__(self, driver: Driver, directory: Path) -> None:
        self.driver = driver
        self.directory = directory
        self.redis = RedisServer()
        self.health_port = free_port()
        self.schema: ProtocolSchema = load_schema(driver.protocol)
        self.config: Config | None = None
        self.layer: Any = None
        self.process: subprocess.Popen | None = None
        self.log_path = directory / "gateway.log"
        #: Every message received from the gateway, with its channel.
        self.received: list[tuple[str, dict[str, Any]]] = []

    free_port = staticmethod(free_port)
    wait_until = staticmethod(wait_until)

    async def __aenter__(self) -> Harness:
        await self.redis.start()
        await self.driver.setup(self)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            if self.layer is not None:
                await close_layer(self.layer)
        finally:
            try:
                await self.driver.teardown()
            finally:
                self.redis.close()

    # -- the gateway process ---------------------------------------------

    def write_config(self, **layer: Any) -> Path:
        """Write the configuration file: the driver's section, the kit's layer."""
        section = {**self.driver.section(self), "grace_period": self.driver.grace_period,
                   "health": {"listen": f"127.0.0.1:{self.health_port}"}}
        document = {"layer": {"url": self.redis.url, "prefix": "conformance", **layer},
                    self.driver.protocol: section}
        path = self.directory / "gateway.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return path

    async def start(self, **layer: Any) -> None:
        """Run ``gateway <protocol>`` (``layer`` overrides layer keys) and wait
        until ``/healthz`` says 200 and the driver says it is ready."""
        path = self.write_config(**layer)
        self.config = load_config(path)
        self.layer = build_layer(self.config.layer)
        inherited = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_LAYER_URL", "GATEWAY_CONFIG")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateways", self.driver.protocol, "--config", str(path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
                env={**inherited, "PYTHONUNBUFFERED": "1", **self.driver.environment(self)},
            )
        await self.wait_until(self._healthy_or_gone, 30, "the gateway answering /healthz with 200")
        self.assert_running()
        await self.driver.ready(self)

    async def _healthy_or_gone(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return True
        try:
            return (await self.get("/healthz"))[0] == 200
        except OSError:
            return False

    def assert_running(self) -> None:
        """Fail, with the gateway's log, unless the process still runs."""
        assert self.process is not None and self.process.poll() is None, (
            f"the {self.driver.protocol} gateway exited with {self.process and self.process.returncode}:\n{self.log()}")

    def log(self) -> str:
        """What the gateway process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        """Send SIGTERM to the gateway."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def exit_code(self, timeout: float) -> int | None:
        """The gateway's exit code once it exits, or None when it runs past ``timeout`` seconds."""
        assert self.process is not None
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- the layer side ----------------------------------------------------

    @property
    def section(self) -> Any:
        """The protocol's section, as the gateway read it."""
        assert self.config is not None, "start() the gateway first"
        return self.config.sections[self.driver.protocol]

    def consumer_channels(self) -> list[str]:
        """The channels the gateway sends to, as ``gateway worker`` finds them."""
        routing = protocol_specs.routing(self.driver.protocol) or registry.gateway_class(self.driver.protocol)
        return list(routing.consumer_channels(self.section))

    async def receive(self, timeout: float = 20.0) -> tuple[str, dict[str, Any]]:
        """The next message the gateway hands to the layer, and its channel;
        fails when it does not match the protocol's schema."""
        channels = self.consumer_channels()
        tasks = {asyncio.ensure_future(self.layer.receive(channel)): channel for channel in channels}
        try:
            done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert done, f"nothing on {channels} after {timeout}s:\n{self.log()}"
        task = next(iter(done))
        channel, message = tasks[task], task.result()
        self.received.append((channel, message))
        problem = self.schema.problem(message)
        assert problem is None, f"the gateway emitted an invalid message on {channel}: {problem}\n{message!r}"
        return channel, message

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send a consumer message to the gateway through the layer."""
        await self.layer.send(channel, message)

    # -- the health endpoint -----------------------------------------------

    async def get(self, path: str) -> tuple[int, str]:
        """GET ``path`` from the health endpoint: the status code and the body."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.health_port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            response = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body.decode("utf-8", "replace")

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of the series of ``name`` whose labels include ``labels``."""
        total = 0.0
        for sample, sample_labels, value in parse_samples((await self.get("/metrics"))[1]):
            if sample == name and labels.items() <= sample_labels.items():
                total += value
        return total


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus exposition text: name, labels, value."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = dict(_LABEL.findall(match.group(2) or ""))
        samples.append((match.group(1), labels, float(match.group(3))))
    return samples
