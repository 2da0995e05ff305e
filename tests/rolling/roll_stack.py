"""The rolling restart the docs describe (start the new worker, then stop the old
one), on real ``gateway worker`` processes, and traffic that keeps flowing meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from servers import PYTHON, REPO, Daemon

DEMO_PATH = str(REPO / "example")


def gateway_worker(config: Path, channels: list[str], directory: Path) -> Daemon:
    """Start ``gateway worker`` of the demo project for ``channels``; wait until it runs."""
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), *channels],
                    env={"DEMO_DATABASE": str(directory / "db.sqlite3")})
    worker.wait_for_log("Running worker for channels", timeout=60)
    return worker


def rolling_restart(workers: list[Daemon], start: Callable[[], Daemon]) -> None:
    """Start a new worker, then stop the oldest (SIGTERM; it drains and exits 0)."""
    old = workers[0]
    workers.append(start())
    code = old.stop()
    workers.remove(old)
    assert code == 0, old.log()


class Traffic:
    """Calls ``send(i)`` for i = 0, 1, 2, ... on a thread until stopped.

    Args:
        send: sends the i-th message (and may block while the system is busy).
        pause: seconds between messages, so the load is steady rather than a flood.
    """

    def __init__(self, send: Callable[[int], None], pause: float = 0.01) -> None:
        self.send = send
        self.pause = pause
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.send(self.sent)
                self.sent += 1
                time.sleep(self.pause)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def wait_sent(self, count: int, timeout: float = 60.0) -> None:
        """Block until ``count`` more messages than now were sent."""
        target = self.sent + count
        deadline = time.monotonic() + timeout
        while self.sent < target:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"only {self.sent} of {target} messages sent"
            time.sleep(0.02)

    def stop(self) -> int:
        """Stop sending; return how many messages were sent."""
        self._stop.set()
        self._thread.join(60)
        assert self.error is None, self.error
        return self.sent
