"""The whole email gateway in several variants, measured in turn against one baseline.

    python -m bench.email.compare VARIANTS [--clients 1] [--messages 1000] [--rounds 5]

VARIANTS is JSON: ``{"name": {"yaml": "...", "checkout": "DIR", "env": {...}}}``;
``yaml`` is appended to the ``email:`` section (indent it by two spaces),
``checkout`` runs the gateway from another work tree (``git worktree add DIR
COMMIT``) and ``env`` adds environment variables. Every variant gets its own
gateway, spool, key prefix and ``gateway worker`` on one private Redis; the
bare aiosmtpd baseline and each variant are loaded in turn, ``--rounds``
times, so that all of them see the same moments of the machine's load.
Prints each variant's rates, the median and its ratio to the baseline's
median, and the gateway's CPU per message. Example: the hand-off linger::

    python -m bench.email.compare '{"5ms": {"yaml": "  handoff_linger: 0.005\\n"},
                                    "10ms": {"yaml": "  handoff_linger: 0.01\\n"}}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import REPO, redis_server, stop_all
from bench.email.harness import (Acks, cpu_seconds, load, start_bare, start_consumer, start_gateway,
                                 write_config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", help="JSON: name -> {yaml, checkout, env}")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--messages", type=int, default=1000, help="messages per load")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    variants = json.loads(args.variants)
    work = Path(tempfile.mkdtemp(prefix="email-compare-"))
    procs: list[subprocess.Popen] = []
    try:
        redis, redis_url = redis_server()
        procs.append(redis)
        bare, bare_port = start_bare()
        procs.append(bare)
        gateways = {}
        for name, variant in variants.items():
            directory = work / name
            directory.mkdir()
            config, port, health = write_config(directory, "fast", redis_url)
            config.write_text(config.read_text().replace("prefix: bench-fast", f"prefix: compare-{name}")
                              + variant.get("yaml", ""))
            gateway = start_gateway(config, port, Path(variant.get("checkout", REPO)), variant.get("env"))
            procs.append(gateway)
            procs.append(start_consumer(config, "fast"))
            acks = Acks(health)
            asyncio.run(load(port, 4, 200))  # warm-up
            acks.wait_for(200)
            gateways[name] = {"pid": gateway.pid, "port": port, "acks": acks, "done": 200, "rates": [], "cpu": []}
        bare_rates = []
        for _ in range(args.rounds):
            began = time.perf_counter()
            asyncio.run(load(bare_port, args.clients, args.messages))
            bare_rates.append(args.messages / (time.perf_counter() - began))
            for state in gateways.values():
                cpu_before, began = cpu_seconds(state["pid"]), time.perf_counter()
                asyncio.run(load(state["port"], args.clients, args.messages, state["done"]))
                state["done"] += args.messages
                seconds = state["acks"].wait_for(state["done"]) - began
                state["rates"].append(args.messages / seconds)
                state["cpu"].append((cpu_seconds(state["pid"]) - cpu_before) / args.messages * 1000)
        bare = statistics.median(bare_rates)
        print(f"{args.clients} client(s), {args.messages} messages per load, {args.rounds} rounds")
        print(f"{'bare':>10}  {' '.join(f'{r:.0f}' for r in bare_rates)}  median {bare:.0f}/s")
        for name, state in gateways.items():
            median = statistics.median(state["rates"])
            print(f"{name:>10}  {' '.join(f'{r:.0f}' for r in state['rates'])}  median {median:.0f}/s "
                  f"({median / bare:.2f}x), gateway CPU {statistics.median(state['cpu']):.3f} ms/msg")
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
