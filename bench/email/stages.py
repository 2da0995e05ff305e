"""Where the email gateway's ratio goes: its SMTP listener stage by stage vs bare aiosmtpd.

    python -m bench.email.stages [--messages 4000]

The same load as ``python -m bench.email`` (aiosmtplib clients, ~2 KB messages,
reused connections, 1 client then 20) against the bare aiosmtpd baseline
and against the gateway's own listener (bench/email/stage_server.py)
answering 250 after: nothing but the dialogue; a durable spool write; the
spool write and then the parse asked of the parser process. There is
no Redis and no consumer here: the full gateway is ``bench.email``'s figure. Each
stage's ratio is against the baseline measured right before it; CPU per
message is the server's (its parser process included); "loop waits" is the share
of the run its event loop waited for a core (as in ``bench.email``). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, REPO, free_port, stop_all, wait_for_port
from bench.email.harness import HERE, core_wait_seconds, cpu_seconds, disk_line, load, start_bare

STAGES = {
    "dialogue": "the gateway's listener answering 250 at once (its MAIL/RCPT/DATA paths, uvloop)",
    "spool": "250 once the message is in the durable spool (group commit, fdatasync)",
    "parse": "the same, then the MIME parse asked of the parser process",
}


def measure(pid: int, port: int, clients: int, total: int) -> tuple[float, float, float]:
    """Messages/s, the server's CPU ms per message and the % of the load its loop waited for a core."""
    before, wait_before = cpu_seconds(pid), core_wait_seconds(pid)
    began = time.perf_counter()
    asyncio.run(load(port, clients, total))
    seconds = time.perf_counter() - began
    return (total / seconds, (cpu_seconds(pid) - before) / total * 1000,
            (core_wait_seconds(pid) - wait_before) / seconds * 100)


def start_stage(stage: str, spool: Path) -> tuple[subprocess.Popen, int]:
    """bench/email/stage_server.py doing ``stage``, and its port, warmed up."""
    port = free_port()
    proc = subprocess.Popen([PYTHON, str(HERE / "stage_server.py"), str(port), stage, str(spool)], cwd=REPO,
                            stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    wait_for_port(port, timeout=30)
    asyncio.run(load(port, 4, 200))  # warm-up
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000, help="messages per 20-client run (1 client: a quarter)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="email-stages-"))
    procs: list[subprocess.Popen] = []
    try:
        bare, bare_port = start_bare()
        procs.append(bare)
        print("email stages: the gateway's listener alone, stage by stage, vs bare aiosmtpd (same run); "
              + disk_line(work / "probe"))
        for stage, what in STAGES.items():
            print(f"  {stage}: {what}")
        print(f"{'stage':>9} {'clients':>7} {'bare aiosmtpd':>14} {'stage':>9} {'ratio':>6} "
              f"{'CPU/msg bare':>13} {'stage':>8} {'loop waits: bare':>17} {'stage':>6}")
        for stage in STAGES:
            server, port = start_stage(stage, work / stage)
            procs.append(server)
            for clients, total in ((1, max(100, args.messages // 4)), (20, args.messages)):
                bare_rate, bare_cpu, bare_waits = measure(bare.pid, bare_port, clients, total)
                rate, cpu, waits = measure(server.pid, port, clients, total)
                print(f"{stage:>9} {clients:>7} {bare_rate:>11.0f}/s {rate:>6.0f}/s {rate / bare_rate:>5.2f}x "
                      f"{bare_cpu:>10.2f} ms {cpu:>5.2f} ms {bare_waits:>16.0f}% {waits:>5.0f}%")
            server.terminate()
            server.wait(30)
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
