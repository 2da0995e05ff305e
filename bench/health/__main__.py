"""The health endpoint under scraping: latency and throughput of ``/metrics``
and ``/healthz``, and the cost of rendering a daemon's series.

Runs the endpoint in this process (the code of the checkout on ``sys.path``)
with the series a busy WebSocket gateway has, and a client that opens a new
connection per request, as ``curl`` does, or keeps one open, as Prometheus does.

    python -m bench.health [--requests 2000]

To compare two versions, run it with each checkout first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from gateways.core.health import HealthServer
from gateways.core.metrics import Metrics

from bench.common import free_port


def busy_metrics() -> Metrics:
    """The series of a WebSocket gateway that has served a while."""
    metrics = Metrics()
    for mtype in ("websocket.connect", "websocket.receive", "websocket.disconnect"):
        metrics.inc("messages_in_total", "messages handed to the layer", amount=1000, type=mtype)
        metrics.inc("handoff_failures_total", "messages the layer refused", reason="full", type=mtype)
    for mtype in ("websocket.accept", "websocket.send", "websocket.close", "websocket.group_add"):
        metrics.inc("messages_out_total", "consumer messages acted on", amount=1000, type=mtype)
    for reason in ("max_connections", "origin", "no_route", "accept_timeout", "consumer"):
        metrics.inc("connections_refused_total", "handshakes refused", reason=reason)
    metrics.add("connections_open", 500, "open WebSocket connections")
    for n in range(2000):
        metrics.observe("layer_send_seconds", (n % 50) / 10000, "layer send latency")
    return metrics


async def request(port: int, path: str, reader=None, writer=None) -> tuple[float, int]:
    """One GET; its seconds and body length. With ``reader``/``writer``, on that kept-alive connection."""
    started = time.perf_counter()
    own = reader is None
    if own:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{'Connection: close' if own else ''}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    body = await reader.readexactly(length)
    if own:
        writer.close()
    return time.perf_counter() - started, len(body)


def summary(name: str, seconds: list[float], size: int) -> str:
    ordered = sorted(seconds)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return (f"{name:28} {len(seconds) / sum(seconds):8.0f}/s  p50 {statistics.median(seconds) * 1e3:6.3f} ms  "
            f"p99 {p99 * 1e3:6.3f} ms  body {size} B")


async def main(requests: int) -> None:
    metrics = busy_metrics()
    started = time.perf_counter()
    for _ in range(requests):
        metrics.render()
    print(f"{'render() alone':28} {requests / (time.perf_counter() - started):8.0f}/s")
    server = HealthServer(metrics, lambda: (True, {"layer": True, "stopping": False, "connections": 500}))
    port = free_port()
    await server.start("127.0.0.1", port)
    try:
        for path in ("/metrics", "/healthz"):
            await request(port, path)  # warm up
            results = [await request(port, path) for _ in range(requests)]
            print(summary(f"{path} new connection", [s for s, _ in results], results[-1][1]))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                results = [await request(port, path, reader, writer) for _ in range(requests)]
                print(summary(f"{path} kept alive", [s for s, _ in results], results[-1][1]))
            except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
                print(f"{path + ' kept alive':28} not supported (the server closes after each answer)")
            finally:
                writer.close()
    finally:
        await server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
