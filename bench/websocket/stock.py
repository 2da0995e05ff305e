"""Stock Channels consumers behind the gateway against the same consumers under Daphne.

    python -m bench.websocket.stock [--seconds 3] [--members 1000] [--broadcasts 10] [--layer stock|batched]

In one run, on one Redis:

- echo: a stock ``AsyncWebsocketConsumer`` echo (bench/websocket/stock_app.py)
  with 1, 50 and 200 closed-loop connections, behind ``gateway websocket`` +
  ``gateway worker`` (one instance per connection) and under Daphne;
- broadcast: the Channels tutorial's chat consumer with ``--members``
  connections in one room; one member sends, and the time until every member
  has the message is measured, ``--broadcasts`` times, on each server;
- memory: resident memory added by the members (gateway + worker, Daphne).

The project's ``CHANNEL_LAYERS`` (bench/websocket/stock_settings.py) is
channels_redis's layer, as a Daphne project has it (``--layer batched``: the
gateway's batched layer), the same in the worker and in Daphne. Replies from
the worker to the gateway go through the YAML's layer either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import websockets
import yaml

from bench.common import (
    PYTHON, REPO, describe, free_port, print_rows, raise_fd_limit, redis_server, rss_kib, start, stop, wait_for_port,
)
from bench.websocket.__main__ import echo_load


async def open_many(url: str, count: int) -> list:
    sockets = []
    for at in range(0, count, 100):
        sockets += await asyncio.gather(*(websockets.connect(url, open_timeout=120, max_queue=None)
                                          for _ in range(min(100, count - at))))
    return sockets


async def broadcast(url: str, members: int, rounds: int, pids: list[int]) -> dict:
    """Open ``members`` chat connections in one room; time ``rounds`` broadcasts to all."""
    before = sum(rss_kib(pid) for pid in pids)
    sockets = await open_many(url, members)
    await asyncio.sleep(1)
    memory = (sum(rss_kib(pid) for pid in pids) - before) / members
    times: list[float] = []
    for i in range(rounds + 1):  # the first round warms up
        began = time.perf_counter()
        await sockets[0].send(json.dumps({"message": f"round {i}"}))
        received = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 60) for ws in sockets))
        elapsed = time.perf_counter() - began
        assert all(json.loads(r)["message"] == f"round {i}" for r in received)
        if i:
            times.append(elapsed)
    await asyncio.gather(*(ws.close() for ws in sockets))
    return {"p50": statistics.median(times) * 1000, "max": max(times) * 1000,
            "rate": members * len(times) / sum(times), "kib": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each echo step")
    parser.add_argument("--members", type=int, default=1000, help="connections in the broadcast room")
    parser.add_argument("--broadcasts", type=int, default=10, help="broadcasts measured per server")
    parser.add_argument("--layer", choices=["stock", "batched"], default="stock",
                        help="the project's CHANNEL_LAYERS: channels_redis's layer or the gateway's batched one")
    args = parser.parse_args()
    raise_fd_limit()
    redis, redis_url = redis_server()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ws-stock-"))
    prefix = f"b{uuid.uuid4().hex[:6]}"
    gateway_port, daphne_port = free_port(), free_port()
    config = workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "layer": {"url": redis_url, "prefix": prefix},
        "django": {"settings": "bench.websocket.stock_settings", "path": [str(REPO)]},
        "log": {"level": "WARNING"},
        "websocket": {"listen": f"127.0.0.1:{gateway_port}", "max_connections": 100000,
                      "routes": [{"path": "^/ws/.*$", "channel": "websocket.app"}]},
    }))
    env = {"BENCH_REDIS_URL": redis_url, "BENCH_PREFIX": prefix, "BENCH_LAYER": args.layer,
           "DJANGO_SETTINGS_MODULE": "bench.websocket.stock_settings"}
    gateway = start([PYTHON, "-m", "gateways", "websocket", "--config", str(config)])
    worker = start([PYTHON, "-m", "gateways", "worker", "--config", str(config), "websocket.app"], env=env)
    # Daphne gets a prefix of its own so the two rooms never share members.
    daphne = start([PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(daphne_port),
                    "bench.websocket.stock_app:application"], env={**env, "BENCH_PREFIX": prefix + "d"})
    procs = [gateway, worker, daphne]
    servers = {"gateway": (gateway_port, [gateway.pid, worker.pid]), "daphne": (daphne_port, [daphne.pid])}
    results: dict[str, dict] = {}
    try:
        for port, _ in servers.values():
            wait_for_port(port)
        time.sleep(3)  # the worker imports Django after the gateway listens

        async def measure() -> None:
            for n in (1, 50, 200):
                for name, (port, _) in servers.items():
                    count, elapsed, lat = await echo_load(f"ws://127.0.0.1:{port}/ws/echo/", n, args.seconds)
                    results[f"{name}-{n}"] = describe(f"{name} stock echo, {n} connection(s)", count, elapsed, lat)
            for name, (port, pids) in servers.items():
                results[f"{name}-broadcast"] = await broadcast(f"ws://127.0.0.1:{port}/ws/chat/bench/",
                                                               args.members, args.broadcasts, pids)

        asyncio.run(measure())
    finally:
        for proc in procs:
            stop(proc)
        stop(redis)

    print_rows("Stock AsyncWebsocketConsumer echo (closed loop, 64-byte text)",
               [results[f"{name}-{n}"] for n in (1, 50, 200) for name in servers])
    print(f"\nBroadcast: tutorial chat consumer, {args.members} members, {args.broadcasts} broadcasts")
    print(f"  {'':24} {'deliveries/s':>13} {'p50 ms':>8} {'max ms':>8} {'KiB/member':>11}")
    for name in servers:
        row = results[f"{name}-broadcast"]
        print(f"  {name:24} {row['rate']:13.0f} {row['p50']:8.1f} {row['max']:8.1f} {row['kib']:11.1f}")
    print("\nRatios (gateway / daphne)")
    for n in (1, 50, 200):
        g, d = results[f"gateway-{n}"], results[f"daphne-{n}"]
        target = "  (target >= 1.0)" if n == 50 else ""
        print(f"  echo throughput, {n:>3} connection(s): {g['rate'] / d['rate']:.2f}{target};"
              f" p99 {g['p99'] / d['p99']:.2f}")
    g, d = results["gateway-broadcast"], results["daphne-broadcast"]
    print(f"  broadcast deliveries/s: {g['rate'] / d['rate']:.2f}; p50 time to reach every member "
          f"{g['p50'] / d['p50']:.2f}")


if __name__ == "__main__":
    main()
