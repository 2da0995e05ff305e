"""Test stack pieces: gateway configs, independent MQTT clients, a layer reader."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from servers import Daemon, RedisServer, free_port, gateway_daemon, require_binary

#: Seconds an unread message lives in the tests' layer: longer than any test.
EXPIRY = 600


def write_config(directory: Path, redis_url: str, broker_url: str, subscriptions: list[dict[str, Any]],
                 client_id: str | None = None, prefix: str | None = None, **overrides: Any) -> Path:
    """A YAML file for one MQTT gateway (health endpoint on a free port)."""
    section = {
        "broker": broker_url,
        "client_id": client_id or f"test-{uuid.uuid4().hex[:10]}",
        "subscriptions": subscriptions,
        "grace_period": 5,
        "reconnect_max": 1,
        "health": {"listen": f"127.0.0.1:{free_port()}"},
        **overrides,
    }
    config = {
        "layer": {"url": redis_url, "prefix": prefix or f"m{uuid.uuid4().hex[:8]}", "expiry": EXPIRY,
                  "capacity": 5000},
        "django": {"settings": "demo.settings", "path": ["../example"]},
        "log": {"level": "INFO"},
        "mqtt": section,
    }
    path = directory / f"mqtt-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_gateway(config: Path, connects: int = 1) -> Daemon:
    """Start ``gateway mqtt`` and wait until it has subscribed."""
    daemon = gateway_daemon("mqtt", config)
    wait_for_count(daemon, "subscribed to", connects)
    return daemon


def wait_for_count(daemon: Daemon, text: str, count: int, timeout: float = 30.0) -> None:
    """Block until ``text`` appears ``count`` times in the daemon's log."""
    deadline = time.monotonic() + timeout
    while daemon.log().count(text) < count:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"{daemon.name} exited with {daemon.proc.returncode}:\n{daemon.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{daemon.name}: {text!r} not seen {count} times after {timeout}s:\n"
                                 f"{daemon.log()}")
        time.sleep(0.05)


def mosquitto_pub(port: int, topic: str, message: bytes | str = b"", qos: int = 0, *extra: str,
                  lines: list[str] | None = None) -> None:
    """Publish with the mosquitto_pub client (``lines``: one message per line on one connection)."""
    binary = require_binary("mosquitto_pub", "mosquitto-clients")
    argv = [binary, "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos), *extra]
    if lines is not None:
        subprocess.run(argv + ["-l"], input="\n".join(lines) + "\n", text=True, check=True, timeout=60)
    else:
        data = message.encode() if isinstance(message, str) else message
        subprocess.run(argv + ["-s"], input=data, check=True, timeout=30)


class Subscriber:
    """A mosquitto_sub client printing ``topic|qos|retain|...`` lines, read on a thread.

    Args:
        port: the broker's port.
        topic_filter: what to subscribe to.
        fmt: mosquitto_sub's -F format (fields separated by ``|``).
        qos: the subscription's QoS.
        v5: speak MQTT 5 (needed to see properties).
    """

    def __init__(self, port: int, topic_filter: str, fmt: str = "%t|%q|%r|%p", qos: int = 2,
                 v5: bool = True) -> None:
        binary = require_binary("mosquitto_sub", "mosquitto-clients")
        self.port = port
        self.filter = topic_filter
        argv = [binary, "-h", "127.0.0.1", "-p", str(port), "-t", topic_filter, "-q", str(qos), "-F", fmt]
        if v5:
            argv += ["-V", "5"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def ready(self, probe_topic: str, timeout: float = 20.0) -> None:
        """Publish probes on ``probe_topic`` until one comes back: the subscription is in place."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith(probe_topic + "|") for line in self.lines):
            if time.monotonic() > deadline:
                raise AssertionError(f"mosquitto_sub on {self.filter!r} never received a probe")
            mosquitto_pub(self.port, probe_topic, b"probe", 0)
            time.sleep(0.2)

    def wait_for(self, predicate, timeout: float = 30.0) -> list[str]:
        """Wait until ``predicate(lines)`` holds; return the lines."""
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            if time.monotonic() > deadline:
                raise AssertionError(f"mosquitto_sub on {self.filter!r} got only {self.lines!r}")
            time.sleep(0.05)
        return list(self.lines)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class PersistentRedis(RedisServer):
    """A redis-server that writes every command to an AOF and fsyncs it, so a
    restart keeps the layer's queues: what a test then counts is the
    gateway's doing, not Redis's."""

    def command(self) -> list[str]:
        argv = super().command()
        index = argv.index("--appendonly")
        argv[index + 1] = "yes"
        return argv + ["--appendfsync", "always"]


class PersistentMosquitto:
    """servers.MosquittoServer whose persistence works when the tests run as root.

    Mosquitto started as root drops to the ``mosquitto`` user, which cannot
    write the 0700 temporary directory, so ``persistence true`` silently
    saves nothing and a restart loses every session. Opening the directory
    lets the broker keep sessions and unacknowledged messages across a restart.
    """

    def __new__(cls):
        from servers import MosquittoServer

        server = MosquittoServer()
        server.dir.chmod(0o777)
        return server


class LayerReader:
    """Reads a channel of the gateway's layer from the test process (a consumer stand-in).

    Args:
        config: the gateway's YAML (for the layer section).
    """

    def __init__(self, config: Path) -> None:
        from gateways.core.config import load_config
        from gateways.core.layer import build_layer

        self.layer = build_layer(load_config(config).layer)

    async def collect(self, channel: str, until, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Receive from ``channel`` until ``until(messages)`` holds; retry while Redis is away."""
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not until(messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{channel}: {len(messages)} messages before the timeout")
            try:
                messages.append(await asyncio.wait_for(self.layer.receive(channel), min(left, 10)))
            except asyncio.TimeoutError:
                continue
            except Exception:  # Redis restarting
                await asyncio.sleep(0.2)
        return messages

    async def nothing_more(self, channel: str, wait: float) -> list[dict[str, Any]]:
        """Whatever else arrives on ``channel`` within ``wait`` seconds (expected: nothing)."""
        extra = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                extra.append(await asyncio.wait_for(self.layer.receive(channel), left))
            except asyncio.TimeoutError:
                break
        return extra

    async def close(self) -> None:
        from gateways.core.layer import close_layer

        await close_layer(self.layer)


class SecureMosquitto:
    """A Mosquitto with a TLS listener (its own CA) and a password file: no anonymous clients.

    Args:
        user: the one user name.
        password: its password.
    """

    def __init__(self, user: str = "gateway", password: str = "s3cret") -> None:
        from servers import MosquittoServer

        self.user, self.password = user, password
        openssl = require_binary("openssl", "openssl")
        passwd = require_binary("mosquitto_passwd", "mosquitto")
        self.server = MosquittoServer()
        d = self.server.dir
        self.ca = d / "ca.pem"
        run = lambda *argv: subprocess.run(argv, cwd=d, check=True, capture_output=True)  # noqa: E731
        run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
        run(openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr")
        (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run(openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
        run(passwd, "-c", "-b", str(d / "passwords"), user, password)
        # Mosquitto started as root reads these after dropping to its own user.
        d.chmod(0o755)
        for path in d.iterdir():
            path.chmod(0o644)
        port = self.server.port

        def command() -> list[str]:
            conf = d / "mosquitto.conf"
            conf.write_text(
                f"listener {port} 127.0.0.1\n"
                "allow_anonymous false\n"
                f"password_file {d}/passwords\n"
                f"cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
            )
            return [self.server.binary, "-c", str(conf)]

        self.server.command = command  # type: ignore[method-assign]
        self.port = port

    def start(self) -> "SecureMosquitto":
        self.server.start()
        return self

    def close(self) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"mqtts://localhost:{self.port}"

    def client_args(self) -> list[str]:
        """mosquitto_pub/sub arguments to connect."""
        return ["--cafile", str(self.ca), "-u", self.user, "-P", self.password]
