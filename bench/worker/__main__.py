"""Worker path benchmark: stock runworker + channels_redis against gateway worker + batched layer.

    python -m bench.worker [--seconds 4]

In one run on this machine, the same load (send a request to a worker
channel, the consumer answers on the request's reply channel) through:

- **stock**: ``manage.py runworker`` with channels_redis's own layer
  (``layer.batched: false``) on both sides;
- **fast**: ``gateway worker`` with the batched layer on both sides, its
  default: sync handlers on the one thread-sensitive thread, as under
  ``runworker``;
- **parallel** (``SyncConsumer`` only): the same with ``django.parallel_sync:
  true``, a thread per lane;

for an ``AsyncConsumer`` and a ``SyncConsumer``, one request at a time and
with 100 in flight (20 conversations, 5 in flight each). Every conversation
checks that its answers come back in the order it sent the requests and the
bench prints the violations it counted (the worker must keep a
conversation's order; the target is 0).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from bench.common import PYTHON, describe, print_rows, redis_server, start, stop
from gateways.core.config import LayerConfig
from gateways.core.layer import build_layer

PROJECT = Path(__file__).resolve().parent / "project"


async def load(url: str, prefix: str, batched: bool, channel: str, conversations: int, depth: int,
               seconds: float) -> tuple[int, float, list[float], int]:
    """Closed loop: each conversation keeps ``depth`` requests in flight.

    The answers come back the way a gateway takes them: one loop receiving
    every reply channel of the process (``receive_single(process_channel)``).
    Returns (answers, seconds, latencies, order violations)."""
    layer = build_layer(LayerConfig(url=url, prefix=prefix, batched=batched))
    latencies: list[float] = []
    violations = 0
    deadline = time.perf_counter() + seconds
    replies = [await layer.new_channel() for _ in range(conversations + 1)]
    slots = [asyncio.Semaphore(depth) for _ in range(conversations)]
    sent_at: list[dict[int, float]] = [{} for _ in range(conversations)]
    expected = [0] * conversations
    outstanding = 0
    done_sending = asyncio.Event()

    async def sender(index: int) -> None:
        nonlocal outstanding
        seq = 0
        while time.perf_counter() < deadline:
            await slots[index].acquire()
            sent_at[index][seq] = time.perf_counter()
            outstanding += 1
            await layer.send(channel, {"type": "bench.request", "conv": index, "seq": seq,
                                       "reply_channel": replies[index]})
            seq += 1

    async def receiver() -> None:
        nonlocal outstanding, violations
        while not (done_sending.is_set() and outstanding == 0):
            target, message = await asyncio.wait_for(layer.receive_single(layer.process_channel), 30)
            index = replies.index(target)
            seq = message["seq"]
            if seq != expected[index]:
                violations += 1
            expected[index] = seq + 1
            latencies.append(time.perf_counter() - sent_at[index].pop(seq))
            outstanding -= 1
            slots[index].release()

    # Warm-up: one round trip so the worker has built its instances.
    await layer.send(channel, {"type": "bench.request", "conv": -1, "seq": 0, "reply_channel": replies[-1]})
    await asyncio.wait_for(layer.receive_single(layer.process_channel), 60)
    began = time.perf_counter()
    receiving = asyncio.ensure_future(receiver())
    await asyncio.gather(*(sender(i) for i in range(conversations)))
    done_sending.set()
    if outstanding == 0:
        receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)
    elapsed = time.perf_counter() - began
    await layer.close_pools()
    return len(latencies), elapsed, latencies, violations


def write_config(workdir: Path, url: str, prefix: str, batched: bool, parallel_sync: bool = False) -> Path:
    path = workdir / f"{prefix}.yaml"
    path.write_text(yaml.safe_dump({
        "layer": {"url": url, "prefix": prefix, "batched": batched},
        "django": {"settings": "wbench.settings", "path": [str(PROJECT)], "channels": ["bench.async", "bench.sync"],
                   "parallel_sync": parallel_sync},
        "log": {"level": "WARNING"},
    }))
    return path


#: Consumer kind -> the paths measured for it, in the order printed.
PATHS = {"async": ("stock", "fast"), "sync": ("stock", "fast", "parallel")}
#: Target of fast / stock at 100 in flight.
TARGETS = {("fast", "async"): 5.0, ("fast", "sync"): 2.0, ("parallel", "sync"): 5.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each load step")
    args = parser.parse_args()
    redis, url = redis_server()
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    prefixes = {path: f"{path[0]}{uuid.uuid4().hex[:6]}" for path in ("stock", "fast", "parallel")}
    configs = {path: write_config(workdir, url, prefix, batched=path != "stock", parallel_sync=path == "parallel")
               for path, prefix in prefixes.items()}
    env = {"PYTHONPATH": str(PROJECT), "DJANGO_SETTINGS_MODULE": "wbench.settings"}
    procs = [
        start([PYTHON, "-m", "django", "runworker", "bench.async", "bench.sync"],
              env={**env, "GATEWAY_CONFIG": str(configs["stock"])}),
        *(start([PYTHON, "-m", "gateways", "worker", "--config", str(configs[path])],
                env={**env, "GATEWAY_CONFIG": str(configs[path])}) for path in ("fast", "parallel")),
    ]
    results: dict[str, dict] = {}
    try:
        async def measure() -> None:
            for kind, paths in PATHS.items():
                for conversations, depth in ((1, 1), (20, 5)):
                    flight = conversations * depth
                    for path in paths:
                        count, elapsed, lat, bad = await load(url, prefixes[path], path != "stock",
                                                              f"bench.{kind}", conversations, depth, args.seconds)
                        row = describe(f"{path} {kind} consumer, {flight} in flight", count, elapsed, lat)
                        row["violations"] = bad
                        results[f"{path}-{kind}-{flight}"] = row

        asyncio.run(measure())
    finally:
        for proc in procs:
            stop(proc)
        stop(redis)

    rows = [results[f"{path}-{kind}-{flight}"] for kind, paths in PATHS.items() for flight in (1, 100)
            for path in paths]
    print_rows("Worker path: send -> consumer -> reply (closed loop)", rows)
    print("\nOrder violations per conversation (target 0):",
          ", ".join(f"{row['name']}: {row['violations']}" for row in rows))
    print("\nRatios to stock runworker in this run")
    for kind, paths in PATHS.items():
        for path in paths[1:]:
            for flight in (1, 100):
                ratio = results[f"{path}-{kind}-{flight}"]["rate"] / results[f"stock-{kind}-{flight}"]["rate"]
                target = f"  (target >= {TARGETS[path, kind]:g})" if flight == 100 else ""
                print(f"  {path} {kind} consumer, {flight:>3} in flight: {ratio:.2f}{target}")


if __name__ == "__main__":
    main()
