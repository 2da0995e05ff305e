"""WebSocket echo benchmark: the gateway path against Daphne and the raw layer.

    python -m bench.websocket [--seconds 5] [--idle 2000] [--worker stock|fast|both]

Measures, in one run on this machine:

- echo round trips with 1, 50 and 200 connections (messages/s, p50/p99) through
  gateway -> Redis -> echo consumer -> Redis -> gateway, with the stock
  consumer path (``runworker``, channels_redis's own layer: ``layer.batched:
  false``) and/or the fast one (``gateway worker``, the batched layer);
- the same load on Daphne serving an in-process Channels echo consumer;
- the raw channel-layer round trip (send to a channel, an echo process
  answers on a reply channel) with 1 and 50 in flight;
- memory per idle connection with ``--idle`` connections, gateway vs Daphne;

and prints the ratios the issue's targets are stated in.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path
import tempfile

import websockets
import yaml

from bench.common import (
    PYTHON, REPO, describe, free_port, print_rows, raise_fd_limit, redis_server, rss_kib, start, stop, wait_for_port,
)
from gateways.core.config import LayerConfig
from gateways.core.layer import build_layer


async def echo_load(url: str, connections: int, seconds: float) -> tuple[int, float, list[float]]:
    """Closed-loop echo: each connection sends, waits for the echo, repeats."""
    latencies: list[float] = []
    sockets = [await websockets.connect(url, open_timeout=60, max_queue=None) for _ in range(connections)]
    payload = "x" * 64
    deadline = time.perf_counter() + seconds

    async def run(ws) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await ws.send(payload)
            await ws.recv()
            latencies.append(time.perf_counter() - started)

    # Warm up each connection once, then measure.
    for ws in sockets:
        await ws.send("warm")
        await ws.recv()
    began = time.perf_counter()
    await asyncio.gather(*(run(ws) for ws in sockets))
    elapsed = time.perf_counter() - began
    for ws in sockets:
        await ws.close()
    return len(latencies), elapsed, latencies


async def layer_load(url: str, prefix: str, in_flight: int, seconds: float) -> tuple[int, float, list[float]]:
    """Round trips through the layer alone: send to bench.raw, await the pong."""
    layer = build_layer(LayerConfig(url=url, prefix=prefix))
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def run() -> None:
        reply = await layer.new_channel()
        i = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await layer.send("bench.raw", {"type": "bench.ping", "reply": reply, "i": i})
            await layer.receive(reply)
            latencies.append(time.perf_counter() - started)
            i += 1

    began = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(in_flight)))
    return len(latencies), time.perf_counter() - began, latencies


async def idle_memory(url: str, pid: int, count: int) -> float:
    """KiB of server memory per idle connection, opening ``count`` of them."""
    before = rss_kib(pid)
    sockets = []
    for start_at in range(0, count, 100):
        sockets += await asyncio.gather(*(websockets.connect(url, open_timeout=120)
                                          for _ in range(min(100, count - start_at))))
    await asyncio.sleep(1)
    after = rss_kib(pid)
    await asyncio.gather(*(ws.close() for ws in sockets))
    return (after - before) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load step")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections for the memory step")
    parser.add_argument("--worker", choices=["stock", "fast", "both"], default="both",
                        help="consumer path behind the gateway: runworker + stock layer, gateway worker + "
                             "batched layer, or both in the same run")
    args = parser.parse_args()
    raise_fd_limit()
    redis, redis_url = redis_server()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    prefix = f"b{uuid.uuid4().hex[:6]}"
    daphne_port = free_port()
    variants = ["stock", "fast"] if args.worker == "both" else [args.worker]
    ports: dict[str, int] = {}
    procs = []
    env = {"DEMO_DATABASE": str(workdir / "db"), "PYTHONPATH": str(REPO / "example")}
    for variant in variants:
        ports[variant] = free_port()
        config = workdir / f"bench-{variant}.yaml"
        config.write_text(yaml.safe_dump({
            "layer": {"url": redis_url, "prefix": f"{prefix}{variant}", "batched": variant == "fast"},
            "django": {"settings": "demo.settings", "path": [str(REPO / "example")]},
            "log": {"level": "WARNING"},
            "websocket": {"listen": f"127.0.0.1:{ports[variant]}", "max_connections": 100000,
                          "routes": [{"path": "^/echo/$", "channel": "websocket.echo"}]},
        }))
        procs.append(start([PYTHON, "-m", "gateways", "websocket", "--config", str(config)]))
        worker = ([PYTHON, "-m", "django", "runworker", "websocket.echo"] if variant == "stock"
                  else [PYTHON, "-m", "gateways", "worker", "--config", str(config), "websocket.echo"])
        procs.append(start(worker, env={**env, "GATEWAY_CONFIG": str(config), "DJANGO_SETTINGS_MODULE": "demo.settings"}))
    gateway = procs[0]
    daphne = start([PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(daphne_port),
                    "bench.websocket.daphne_app:application"])
    procs += [daphne, start([PYTHON, "-m", "bench.websocket.layer_echo", redis_url, prefix])]
    try:
        for port in (*ports.values(), daphne_port):
            wait_for_port(port)
        time.sleep(2)
        results: dict[str, dict] = {}

        async def measure() -> None:
            for n in (1, 50, 200):
                targets = [(f"gateway {v}", f"ws://127.0.0.1:{ports[v]}/echo/") for v in variants]
                for name, url in (*targets, ("daphne", f"ws://127.0.0.1:{daphne_port}/echo/")):
                    count, elapsed, lat = await echo_load(url, n, args.seconds)
                    results[f"{name}-{n}"] = describe(f"{name} echo, {n} connection(s)", count, elapsed, lat)
            for n in (1, 50):
                count, elapsed, lat = await layer_load(redis_url, prefix, n, args.seconds)
                results[f"layer-{n}"] = describe(f"raw layer round trip, {n} in flight", count, elapsed, lat)
            first = f"ws://127.0.0.1:{ports[variants[0]]}/echo/"
            results["mem-gateway"] = {"kib": await idle_memory(first, gateway.pid, args.idle)}
            results["mem-daphne"] = {"kib": await idle_memory(f"ws://127.0.0.1:{daphne_port}/echo/", daphne.pid, args.idle)}

        asyncio.run(measure())
    finally:
        for proc in procs:
            stop(proc)
        stop(redis)

    rows = [results[f"{name}-{n}"] for n in (1, 50, 200) for name in (*(f"gateway {v}" for v in variants), "daphne")]
    print_rows("WebSocket echo (closed loop, 64-byte text)", rows + [results["layer-1"], results["layer-50"]])
    d50, l1 = results["daphne-50"], results["layer-1"]
    print("\nRatios (targets from issues 2 and 6)")
    for v in variants:
        g50, g1 = results[f"gateway {v}-50"], results[f"gateway {v}-1"]
        print(f"  [{v}] throughput, 50 connections, gateway / daphne:  {g50['rate'] / d50['rate']:.2f}  (target >= 0.5)")
        print(f"  [{v}] p99, 50 connections, gateway / daphne:         {g50['p99'] / d50['p99']:.2f}  (target <= 3)")
        print(f"  [{v}] p50 overhead over the raw layer round trip:    {g1['p50'] - l1['p50']:.2f} ms  (target <= 1 ms)")
    if len(variants) == 2:
        fast, stock = results["gateway fast-50"], results["gateway stock-50"]
        print(f"  fast / stock consumer path, 50 connections:          {fast['rate'] / stock['rate']:.2f}")
    mg, md = results["mem-gateway"]["kib"], results["mem-daphne"]["kib"]
    print(f"  memory per idle connection: gateway {mg:.1f} KiB, daphne {md:.1f} KiB, ratio {mg / md:.2f}  (target <= 0.5)")


if __name__ == "__main__":
    main()
