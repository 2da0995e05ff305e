"""Messages/s through the email gateway vs a bare aiosmtpd server, in the same run.

    /work/venv/bin/python bench/email/bench.py [--messages 2000] [--memory-messages 10000]

Starts a private redis-server, the baseline (bare aiosmtpd answering 250),
then the gateway (`python -m gateways email`, spool fsynced, relay console://)
with a consumer process that acknowledges every email.receive. SMTP clients
reuse their connections and send ~2 KB messages: 1 client, then 20. The
gateway's figure is end to end: from the first MAIL to the last message
acknowledged by the consumer. Then the gateway's RSS is sampled after the
1,000th and the 10,000th message (memory flatness). Prints figures and ratios;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiosmtplib

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))

from servers import free_port, wait_for_port  # noqa: E402

PYTHON = sys.executable
_TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 36)[:1900]
BODY = "\r\n".join(_TEXT[i:i + 76] for i in range(0, len(_TEXT), 76))


def message(n: int) -> bytes:
    return (f"From: bench@example.test\r\nTo: inbox@demo.local\r\nSubject: bench {n}\r\n"
            f"Message-ID: <bench-{n}@example.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{BODY}\r\n").encode()


async def load(port: int, clients: int, total: int, start: int = 0) -> float:
    """Send ``total`` messages over ``clients`` reused connections; return seconds."""
    counter = iter(range(start, start + total))

    async def client() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
        await smtp.connect()
        try:
            for n in counter:
                await smtp.sendmail("bench@example.test", ["inbox@demo.local"], message(n))
        finally:
            await smtp.quit()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - began


class Consumer:
    """The consumer process; counts the messages it acknowledged."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen([PYTHON, str(HERE / "consumer.py"), str(config), "16"], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.count = 0
        self.ready = threading.Event()
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready.wait(30)

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip() == "ready":
                self.ready.set()
            elif line.strip().isdigit():
                with self.changed:
                    self.count = int(line)
                    self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 300) -> float:
        """Block until ``count`` messages were acknowledged; return the time it happened."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.count >= count, timeout):
                raise SystemExit(f"consumer got {self.count} of {count} messages")
        return time.perf_counter()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per 20-client run (1 client: a quarter)")
    parser.add_argument("--memory-messages", type=int, default=10000, help="messages of the memory run (0: skip)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="email-bench-"))
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
    procs: list[subprocess.Popen] = [redis]
    consumer = None
    try:
        wait_for_port(redis_port)
        runs = [(1, max(100, args.messages // 4)), (20, args.messages)]

        bare_port = free_port()
        bare = subprocess.Popen([PYTHON, str(HERE / "bare_server.py"), str(bare_port)], stdout=subprocess.DEVNULL)
        procs.append(bare)
        wait_for_port(bare_port)
        baseline = {}
        asyncio.run(load(bare_port, 4, 200, 0))  # warm-up
        for clients, total in runs:
            baseline[clients] = total / asyncio.run(load(bare_port, clients, total))
        bare.terminate()
        bare.wait()

        port = free_port()
        config = work / "bench.yaml"
        config.write_text(
            f"layer: {{url: 'redis://127.0.0.1:{redis_port}/0', prefix: bench, capacity: 100000}}\n"
            f"email:\n  listen: 127.0.0.1:{port}\n  domains: [demo.local]\n  relay: 'console://'\n"
            f"  spool: {work / 'spool'}\n  max_connections: 100\n"
        )
        gateway = subprocess.Popen([PYTHON, "-m", "gateways", "email", "--config", str(config), "--log-level",
                                    "WARNING"], cwd=REPO)
        procs.append(gateway)
        wait_for_port(port, timeout=30)
        consumer = Consumer(config)
        done = 0
        asyncio.run(load(port, 4, 200, done))  # warm-up
        done += 200
        consumer.wait_for(done)
        gateway_rate, accept_rate, cpu_ms, busy = {}, {}, {}, {}
        for clients, total in runs:
            cpu_before = cpu_seconds(gateway.pid)
            began = time.perf_counter()
            seconds = asyncio.run(load(port, clients, total, done))
            done += total
            finished = consumer.wait_for(done)
            accept_rate[clients] = total / seconds
            gateway_rate[clients] = total / (finished - began)
            used = cpu_seconds(gateway.pid) - cpu_before
            cpu_ms[clients] = used / total * 1000
            busy[clients] = used / (finished - began)

        print(f"email bench: ~{len(message(0))} byte messages, connections reused, fsync on, redis at :{redis_port}")
        print(f"{'clients':>7} {'bare aiosmtpd':>14} {'gateway 250s':>13} {'gateway e2e':>12} {'ratio e2e':>10} "
              f"{'target':>7} {'gw CPU/msg':>11} {'gw busy':>8}")
        for clients, _ in runs:
            ratio = gateway_rate[clients] / baseline[clients]
            target = 0.6 if clients == 1 else 0.8
            print(f"{clients:>7} {baseline[clients]:>11.0f}/s {accept_rate[clients]:>10.0f}/s "
                  f"{gateway_rate[clients]:>9.0f}/s {ratio:>9.2f}x {target:>6.1f}x {cpu_ms[clients]:>8.2f} ms "
                  f"{busy[clients] * 100:>6.0f}%")

        if args.memory_messages:
            total = args.memory_messages
            first = 1000
            asyncio.run(load(port, 20, first, done))
            done += first
            consumer.wait_for(done)
            at_first = rss_kib(gateway.pid)
            asyncio.run(load(port, 20, total - first, done))
            done += total - first
            consumer.wait_for(done)
            at_last = rss_kib(gateway.pid)
            print(f"memory: gateway RSS {at_first / 1024:.1f} MiB after message {first:,}, "
                  f"{at_last / 1024:.1f} MiB after message {total:,} ({(at_last / at_first - 1) * 100:+.1f}%, "
                  f"target within 10%)")
    finally:
        if consumer:
            consumer.stop()
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
