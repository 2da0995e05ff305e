"""The fault suite's machinery: traffic that counts what the protocol accepted,
a ledger of what consumers handled, and the kill -9 of one moving part.

Each protocol's test (``test_suite_<protocol>.py``) builds a :class:`Stack`
of real processes, runs :func:`run_fault` for one part, and gets a row:
protocol | part killed | sent | handled | lost | duplicated | recovery s.
The rows are printed, and appended to ``$FAULT_TABLE`` when it is set.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import redis
import yaml

from servers import PYTHON, REPO, Daemon, RedisServer, wait_until

PROJECT = Path(__file__).resolve().parent / "project"
HEADER = "| protocol | part killed | sent | handled | lost | duplicated | recovery s |"


class AofRedis(RedisServer):
    """The layer's redis-server with an AOF fsynced on every write, so a kill
    -9 loses nothing Redis acknowledged: what the suite counts is ours."""

    def command(self) -> list[str]:
        argv = super().command()
        argv[argv.index("--appendonly") + 1] = "yes"
        return [*argv, "--appendfsync", "always"]


class Ledger:
    """A redis-server the suite never kills, where consumers record each handled
    message (``HINCRBY handled:<protocol> <key> 1``)."""

    def __init__(self) -> None:
        self.server = RedisServer().start()
        self.client = redis.Redis(port=self.server.port, decode_responses=True)

    @property
    def url(self) -> str:
        return self.server.url

    def handled(self, protocol: str) -> dict[str, int]:
        return {key: int(count) for key, count in self.client.hgetall(f"handled:{protocol}").items()}

    def close(self) -> None:
        self.server.close()


class Client(Protocol):
    """One protocol client of the traffic: ``send`` returns once the protocol
    accepted ``key`` (250, PUBACK, Slack's ack, an echo) and raises otherwise."""

    def send(self, key: str) -> None: ...

    def close(self) -> None: ...


class Traffic:
    """Client threads sending numbered keys; a key counts as sent only once the
    protocol accepted it. A client that fails is reopened, as a real one would.

    Args:
        open_client: makes client number ``n``'s connection.
        clients: how many threads.
        pause: seconds between two sends of one client (keeps the rate modest
            on a shared machine).
    """

    def __init__(self, open_client: Callable[[int], Client], clients: int = 2, pause: float = 0.01) -> None:
        self.open_client = open_client
        self.clients = clients
        self.pause = pause
        self.accepted: dict[str, float] = {}
        self.failures = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def start(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def sent_after(self, moment: float) -> set[str]:
        with self.lock:
            return {key for key, at in self.accepted.items() if at > moment}

    def _run(self, number: int) -> None:
        sequence = 0
        while not self.stopping.is_set():
            client = None
            try:
                client = self.open_client(number)
                while not self.stopping.is_set():
                    key = f"k{number}-{sequence}"
                    sequence += 1
                    client.send(key)
                    with self.lock:
                        self.accepted[key] = time.monotonic()
                    time.sleep(self.pause)
            except Exception:  # noqa: BLE001 - the part under test is down: retry, as a client would
                with self.lock:
                    self.failures += 1
                time.sleep(0.1)
            finally:
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001 - it is already broken
                        pass


class Stack(Protocol):
    """The processes of one protocol's run; ``kill`` does kill -9 on ``part`` and
    brings it back (or, for ``instance``, leaves the other instance serving)."""

    protocol: str

    def kill(self, part: str) -> None: ...

    def after_traffic(self, part: str) -> None: ...


@dataclass
class Row:
    protocol: str
    part: str
    sent: int
    handled: int
    lost: int
    duplicated: int
    recovery: float

    def __str__(self) -> str:
        return (f"| {self.protocol} | {self.part} | {self.sent} | {self.handled} | {self.lost} | "
                f"{self.duplicated} | {self.recovery:.1f} |")


def run_fault(stack: Stack, part: str, traffic: Traffic, ledger: Ledger, *, before: int = 60,
              after: int = 60, settle: float = 60.0, written: set[str] | None = None) -> tuple[Row, set[str]]:
    """Traffic, kill -9 of ``part`` mid-stream, more traffic; count.

    Returns the row and the keys sent but never handled. Recovery is the time
    from the kill until a key sent after it was handled. ``written``: for a
    protocol without an acknowledgement, the keys the clients wrote, which
    then count as sent.
    """
    protocol = stack.protocol
    traffic.start()
    try:
        wait_until(lambda: traffic.count() >= before and ledger.handled(protocol), 90,
                   f"{before} {protocol} messages sent and some handled before the kill", 0.05)
        killed_at = time.monotonic()
        stack.kill(part)

        def handled_after_kill() -> bool:
            return bool(traffic.sent_after(killed_at) & set(ledger.handled(protocol)))

        wait_until(handled_after_kill, 120, f"a {protocol} message sent after the {part} was killed is handled",
                   0.05)
        recovery = time.monotonic() - killed_at
        wait_until(lambda: len(traffic.sent_after(killed_at)) >= after, 120,
                   f"{after} {protocol} messages sent after the kill", 0.05)
    finally:
        traffic.stop()
    stack.after_traffic(part)
    sent = set(traffic.accepted) | (written or set())
    deadline = time.monotonic() + settle
    while not sent <= set(ledger.handled(protocol)) and time.monotonic() < deadline:
        time.sleep(0.2)
    handled = ledger.handled(protocol)
    lost = sent - set(handled)
    row = Row(protocol, part, len(sent), len(sent & set(handled)), len(lost),
              sum(count - 1 for count in handled.values()), recovery)
    print(f"\n{HEADER}\n{row}")
    if os.environ.get("FAULT_TABLE"):
        with open(os.environ["FAULT_TABLE"], "a") as table:
            table.write(f"{row}\n")
    return row, lost


def worker(config: Path, channel: str, ledger: Ledger, directory: Path) -> Daemon:
    """`gateway worker` for ``channel`` with the recording consumers, waited for."""
    daemon = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), channel],
                    env={"DEMO_DATABASE": str(directory / "db.sqlite3"), "FAULT_LEDGER_URL": ledger.url})
    daemon.wait_for_log("Running worker for channels", timeout=30)
    return daemon


def django_section() -> dict[str, Any]:
    """The config's ``django:`` section for the recording consumers."""
    return {"settings": "faultapp.settings", "path": [str(PROJECT), str(REPO / "example")]}


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def kill(daemon: Daemon | RedisServer) -> None:
    """kill -9 and reap."""
    proc = daemon.proc
    assert proc is not None and proc.poll() is None, "the part to kill is not running"
    proc.kill()
    proc.wait()
