"""Restarting ``gateway worker`` under a 50-connection echo load.

    python -m bench.websocket.rolling [--connections 50] [--seconds 3]

For the project's consumer API (the demo's ``EchoConsumer``, one instance per
lane) and for a stock ``AsyncWebsocketConsumer`` echo (one instance per
connection, bench/websocket/stock_app.py), each with two procedures:

- ``stop, start``: SIGTERM the worker, then start a new one;
- ``rolling``: start the new worker, wait until it runs, then SIGTERM the old
  one (docs/worker.md, "Deploying new code without dropping anything").

Each connection sends, waits for its echo (at most 30 s, else the message
counts as lost) and sends again, ``--seconds`` before the restart, through it,
and ``--seconds`` after. Printed per run: echoes, messages lost, connections
dropped, the longest wait for an echo, and how long the restart took.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import websockets
import yaml

from bench.common import PYTHON, REPO, free_port, raise_fd_limit, redis_server, start, stop, wait_for_port

#: Seconds a message may wait for its echo before it counts as lost.
LOST_AFTER = 30.0


class Worker:
    """A ``gateway worker`` process whose log is kept, to see when it runs."""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log", dir=workdir)[1])
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **env})

    def wait_running(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while "Running worker for channels" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop(self.proc)


async def run(url: str, connections: int, seconds: float, restart) -> dict:
    """Echo load on ``connections`` sockets around ``restart()`` (run in a thread)."""
    sockets = [await websockets.connect(url, open_timeout=60, max_queue=None) for _ in range(connections)]
    for ws in sockets:
        await ws.send("warm")
        await ws.recv()
    stats = {"echoed": 0, "lost": 0, "dropped": 0, "longest": 0.0}
    done = asyncio.Event()

    async def client(n: int, ws) -> None:
        i = 0
        try:
            while not done.is_set():
                text = f"{n}:{i}"
                began = time.perf_counter()
                await ws.send(text)
                try:
                    reply = await asyncio.wait_for(ws.recv(), LOST_AFTER)
                except asyncio.TimeoutError:
                    stats["lost"] += 1
                    continue
                if reply != text:
                    raise SystemExit(f"connection {n}: sent {text!r}, got {reply!r}")
                stats["echoed"] += 1
                stats["longest"] = max(stats["longest"], time.perf_counter() - began)
                i += 1
        except websockets.ConnectionClosed:
            stats["dropped"] += 1

    clients = [asyncio.create_task(client(n, ws)) for n, ws in enumerate(sockets)]
    await asyncio.sleep(seconds)
    began = time.perf_counter()
    await asyncio.to_thread(restart)
    stats["restart"] = time.perf_counter() - began
    await asyncio.sleep(seconds)
    done.set()
    await asyncio.gather(*clients)
    for ws in sockets:
        await ws.close()
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=3.0, help="load before and after each restart")
    args = parser.parse_args()
    raise_fd_limit()
    redis, redis_url = redis_server()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ws-rolling-"))
    prefix = f"b{uuid.uuid4().hex[:6]}"
    variants = {
        # name: (settings, path, route, channel, echo path, extra env)
        "project API": ("demo.settings", REPO / "example", "^/echo/$", "websocket.echo", "/echo/",
                        {"DEMO_DATABASE": str(workdir / "db")}),
        "stock consumer": ("bench.websocket.stock_settings", REPO, "^/ws/.*$", "websocket.app", "/ws/echo/",
                           {"BENCH_REDIS_URL": redis_url, "BENCH_PREFIX": prefix + "s", "BENCH_LAYER": "stock"}),
    }
    procs = [redis]
    rows = []
    try:
        for name, (settings, path, route, channel, echo_path, env) in variants.items():
            port = free_port()
            config = workdir / f"{channel}.yaml"
            config.write_text(yaml.safe_dump({
                "layer": {"url": redis_url, "prefix": prefix + ("s" if channel == "websocket.app" else "p")},
                "django": {"settings": settings, "path": [str(path)]},
                "log": {"level": "INFO"},
                "websocket": {"listen": f"127.0.0.1:{port}", "max_connections": 100000,
                              "routes": [{"path": route, "channel": channel}]},
            }))
            gateway = start([PYTHON, "-m", "gateways", "websocket", "--config", str(config)])
            procs.append(gateway)
            wait_for_port(port)
            argv = [PYTHON, "-m", "gateways", "worker", "--config", str(config), channel]
            env = {**env, "DJANGO_SETTINGS_MODULE": settings}
            current = [Worker(argv, env, workdir)]
            current[0].wait_running()

            def stop_start() -> None:
                current[0].stop()
                current[0] = Worker(argv, env, workdir)
                current[0].wait_running()

            def rolling() -> None:
                new = Worker(argv, env, workdir)
                new.wait_running()
                current[0].stop()
                current[0] = new

            for procedure, restart in (("stop, start", stop_start), ("rolling", rolling)):
                stats = asyncio.run(run(f"ws://127.0.0.1:{port}{echo_path}", args.connections, args.seconds,
                                        restart))
                rows.append((name, procedure, stats))
                print(f"{name:15} {procedure:12} echoed {stats['echoed']:6}  lost {stats['lost']}  "
                      f"dropped {stats['dropped']}  longest wait {stats['longest'] * 1000:7.0f} ms  "
                      f"restart took {stats['restart']:.1f} s", flush=True)
            current[0].stop()
            stop(gateway)
    finally:
        for proc in reversed(procs):
            stop(proc)

    print(f"\nRestarting gateway worker under a {args.connections}-connection echo load "
          f"({args.seconds:g} s before and after)")
    print(f"  {'consumer':15} {'procedure':12} {'echoed':>7} {'lost':>5} {'dropped':>8} {'longest wait':>13}")
    for name, procedure, stats in rows:
        print(f"  {name:15} {procedure:12} {stats['echoed']:7} {stats['lost']:5} {stats['dropped']:8} "
              f"{stats['longest'] * 1000:10.0f} ms")


if __name__ == "__main__":
    main()
