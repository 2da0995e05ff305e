"""What the email benchmarks share: the load, the baseline, the gateway, the measurements.

``python -m bench.email`` (the gateway against bare aiosmtpd),
``python -m bench.email.stages`` (the listener stage by stage) and
``python -m bench.email.compare`` (variants side by side) are built from these.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import aiosmtplib

from bench.common import PYTHON, REPO, free_port, rss_kib, wait_for_port

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))

from servers import child_pids  # noqa: E402

_TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 36)[:1900]
BODY = "\r\n".join(_TEXT[i:i + 76] for i in range(0, len(_TEXT), 76))


def message(n: int) -> bytes:
    """The ``n``-th bench message: ~2 KB of plain text with its own Subject and Message-ID."""
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


#: The consumer paths measured: stock and fast are measured side by side.
MODES = {
    "stock": "runworker, channels_redis's layer (layer.batched: false) on both sides",
    "fast": "gateway worker, the batched layer on both sides",
    "bare": "a bare layer consumer (receive + ack, no Django), batched layer",
}


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


def fdatasync_ms(directory: Path, gap: float = 0.0, count: int = 200) -> float:
    """The disk's price of one spool write, median ms: ~15 KB (a batch) written into a
    zero-filled segment and ``fdatasync``-ed, the writes ``gap`` seconds apart. On this
    machine's virtual disk it depends on the spacing (see bench/RESULTS.md, Email)."""
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


def tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its live children (the gateway's parser process counts)."""
    return rss_kib(pid) + sum(tree_rss_kib(child) for child in child_pids(pid))


def write_config(work: Path, mode: str, redis_url: str) -> tuple[Path, int, str]:
    """The YAML of one mode: its own port, spool, key prefix and layer kind."""
    port, health = free_port(), f"127.0.0.1:{free_port()}"
    config = work / f"bench-{mode}.yaml"
    config.write_text(
        f"layer: {{url: '{redis_url}', prefix: bench-{mode}, capacity: 100000, "
        f"batched: {'false' if mode == 'stock' else 'true'}}}\n"
        f"django: {{settings: bench_email.settings, path: ['{HERE / 'project'}', '{REPO / 'example'}']}}\n"
        f"email:\n  listen: 127.0.0.1:{port}\n  domains: [demo.local]\n  relay: 'console://'\n"
        f"  spool: {work / ('spool-' + mode)}\n  max_connections: 100\n  health: {{listen: '{health}'}}\n"
    )
    return config, port, health


