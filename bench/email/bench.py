"""Messages/s through the email gateway vs a bare aiosmtpd server, in the same run.

    python bench/email/bench.py [--modes stock,fast,bare] [--rounds 3] [--messages 2000] [--memory-messages 10000]

Starts a private redis-server, the baseline (bare aiosmtpd answering 250),
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
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

import aiosmtplib

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))

from servers import child_pids, free_port, wait_for_port  # noqa: E402

PYTHON = sys.executable
_TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 36)[:1900]
BODY = "\r\n".join(_TEXT[i:i + 76] for i in range(0, len(_TEXT), 76))


def message(n: int) -> bytes:
    return (f"From: bench@example.test\r\nTo: inbox@demo.local\r\nSubject: bench {n}\r\n"
            f"Message-ID: <bench-{n}@example.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{BODY}\r\n").encode()


async def load(port: int, clients: int, total: int, start: int = 0) -> float:
    """Send ``total`` messages over ``clients`` reused connections; return seconds.

    Runs alone in this process, so this process's CPU time during it is the client's.
    """
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


class Acks:
    """Counts what consumers acknowledged, from the gateway's ``/metrics``.

    Args:
        health: the gateway's health endpoint ``HOST:PORT``.
    """

    def __init__(self, health: str) -> None:
        self.url = f"http://{health}/metrics"

    def count(self) -> int:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("gateway_email_acked_total")))

    def wait_for(self, count: int, timeout: float = 300) -> float:
        """Block until ``count`` messages were acknowledged; return when that was seen.

        Called once the load is over, so polling often only costs the tail: a 50 ms
        step would add up to 10% to a half-second run."""
        deadline = time.monotonic() + timeout
        while self.count() < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"consumers acknowledged {self.count()} of {count} messages")
            time.sleep(0.002)
        return time.perf_counter()


#: The consumer paths measured: DESIGN.md asks for stock and fast side by side.
MODES = {
    "stock": "runworker, channels_redis's layer (layer.batched: false) on both sides",
    "fast": "gateway worker, the batched layer on both sides",
    "bare": "a bare layer consumer (receive + ack, no Django), batched layer",
}


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


def start_consumer(config: Path, mode: str) -> subprocess.Popen:
    """The consumer of ``mode``: an ack-only EmailConsumer under runworker or gateway worker, or bare."""
    if mode == "bare":
        proc = subprocess.Popen([PYTHON, str(HERE / "consumer.py"), str(config), "16"], cwd=REPO,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        proc.stdout.readline()  # "ready"
        return proc
    argv = ([PYTHON, "-m", "django", "runworker", "email.receive"] if mode == "stock"
            else [PYTHON, "-m", "gateways", "worker", "--config", str(config), "email.receive"])
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "bench_email.settings", "GATEWAY_CONFIG": str(config),
             "DEMO_DATABASE": str(config.parent / "db.sqlite3"),
             "PYTHONPATH": os.pathsep.join([str(HERE / "project"), str(REPO / "example"), str(REPO)])})
    for line in proc.stderr:
        if "Running worker" in line:
            break
    else:
        raise SystemExit(f"{mode} consumer exited with {proc.wait()} before it ran")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
    return proc


def start_redis(work: Path) -> tuple[subprocess.Popen, int]:
    """A private redis-server keeping nothing on disk, and its port, once it answers."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
    wait_for_port(port)
    return proc, port


def start_bare() -> tuple[subprocess.Popen, int]:
    """The baseline (a bare aiosmtpd server answering 250) and its port, warmed up."""
    port = free_port()
    proc = subprocess.Popen([PYTHON, str(HERE / "bare_server.py"), str(port)], stdout=subprocess.DEVNULL)
    wait_for_port(port)
    asyncio.run(load(port, 4, 200))
    return proc, port


def start_gateway(config: Path, port: int, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``gateway email`` with ``config``, run from the checkout ``cwd``, once it listens on ``port``."""
    proc = subprocess.Popen([PYTHON, "-m", "gateways", "email", "--config", str(config), "--log-level", "WARNING"],
                            cwd=cwd, env={**os.environ, **(env or {})})
    wait_for_port(port, timeout=30)
    return proc


def stop(procs: list[subprocess.Popen]) -> None:
    """Terminate ``procs``, the last started first; kill any that has not exited 15 s later."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def fdatasync_ms(directory: Path, gap: float = 0.0, count: int = 200) -> float:
    """The disk's price of one spool write, median ms: ~15 KB (a batch) written into a
    zero-filled segment and ``fdatasync``-ed, the writes ``gap`` seconds apart. On this
    machine's virtual disk it depends on the spacing (see docs/email.md)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "probe-segment"
    record = message(0) * 7
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, bytes(count * len(record)))
        os.fsync(fd)
        times = []
        for n in range(count):
            os.pwrite(fd, record, n * len(record))
            began = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - began)
            if gap:
                time.sleep(gap)
    finally:
        os.close(fd)
        path.unlink()
    return sorted(times)[count // 2] * 1000


def disk_line(directory: Path) -> str:
    """What a durable spool write costs on this disk, back to back and 2 ms apart."""
    return (f"this disk: fdatasync of a spool batch {fdatasync_ms(directory):.2f} ms back to back, "
            f"{fdatasync_ms(directory, 0.002):.2f} ms when 2 ms apart (medians)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` and its live children (the
    gateway's parser process counts as the gateway's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in child_pids(pid))


def core_wait_seconds(pid: int) -> float:
    """Time the main thread of ``pid`` (a server's event loop) has spent runnable but
    waiting for a core (the scheduler's run-queue wait); NaN where the kernel keeps no schedstat."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its live children."""
    own = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            own = int(line.split()[1])
    return own + sum(rss_kib(child) for child in child_pids(pid))


def write_config(work: Path, mode: str, redis_port: int) -> tuple[Path, int, str]:
    """The YAML of one mode: its own port, spool, key prefix and layer kind."""
    port, health = free_port(), f"127.0.0.1:{free_port()}"
    config = work / f"bench-{mode}.yaml"
    config.write_text(
        f"layer: {{url: 'redis://127.0.0.1:{redis_port}/0', prefix: bench-{mode}, capacity: 100000, "
        f"batched: {'false' if mode == 'stock' else 'true'}}}\n"
        f"django: {{settings: bench_email.settings, path: ['{HERE / 'project'}', '{REPO / 'example'}']}}\n"
        f"email:\n  listen: 127.0.0.1:{port}\n  domains: [demo.local]\n  relay: 'console://'\n"
        f"  spool: {work / ('spool-' + mode)}\n  max_connections: 100\n  health: {{listen: '{health}'}}\n"
    )
    return config, port, health


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
        redis, redis_port = start_redis(work)
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
            config, port, health = write_config(work, mode, redis_port)
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
                at_first = rss_kib(gateway.pid)
                asyncio.run(load(port, 20, total - first, done))
                done += total - first
                acks.wait_for(done)
                at_last = rss_kib(gateway.pid)
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
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
