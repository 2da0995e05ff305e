"""Redis Sentinel: the master is killed under traffic; the gateways and
`gateway worker` follow the new master without a restart.

A real master, a real replica and three real sentinels (``redis-server
--sentinel``). Mail keeps arriving while the master dies: every message that
got a 250 reaches the consumer (the email spec's promise; duplicates are
allowed), and a WebSocket echo through `gateway worker` answers again once
the replica is promoted. The recovery time is printed.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import websockets
import yaml

from email_stack import Layer
from servers import PYTHON, REPO, Daemon, RedisServer, free_port, listening_gateway, require_binary, wait_until

pytestmark = pytest.mark.e2e

MASTER = "gwmaster"


class Replica(RedisServer):
    """A redis-server replicating ``master``."""

    name = "replica"

    def __init__(self, master: RedisServer) -> None:
        self.master = master
        super().__init__()

    def command(self) -> list[str]:
        return [*super().command(), "--replicaof", "127.0.0.1", str(self.master.port)]


class Sentinel(RedisServer):
    """``redis-server --sentinel`` watching the master (quorum 2, 1 s down-after)."""

    name = "sentinel"

    def __init__(self, master: RedisServer) -> None:
        self.master = master
        super().__init__()

    def command(self) -> list[str]:
        conf = self.dir / "sentinel.conf"  # sentinel rewrites its file: a private one each
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        return [self.binary, str(conf), "--sentinel"]


@pytest.fixture
def cluster():
    require_binary("redis-server", "redis-server")
    master = RedisServer().start()
    replica = Replica(master).start()
    sentinels = [Sentinel(master).start() for _ in range(3)]
    try:
        def ready() -> bool:
            info = redis.Redis(port=replica.port).info("replication")
            if info.get("master_link_status") != "up":
                return False
            for sentinel in sentinels:
                client = redis.Redis(port=sentinel.port, decode_responses=True)
                state = client.sentinel_master(MASTER)
                if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < 2:
                    return False
            return True

        wait_until(ready, 30, "the replica and three sentinels see the master", 0.1)
        yield {"master": master, "replica": replica, "sentinels": sentinels}
    finally:
        for server in (*sentinels, replica, master):
            server.close()


def master_port(sentinels: list[RedisServer]) -> int:
    """The master's port as the first sentinel reports it."""
    client = redis.Redis(port=sentinels[0].port, decode_responses=True)
    return int(client.sentinel_get_master_addr_by_name(MASTER)[1])


def write_config(directory: Path, sentinels: list[RedisServer]) -> tuple[Path, int, int]:
    """One YAML for the email gateway, the WebSocket gateway and the worker."""
    url = "sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in sentinels) + f"/{MASTER}/0"
    email_port, ws_port = free_port(), free_port()
    config: dict[str, Any] = {
        "layer": {"url": url, "prefix": f"s{uuid.uuid4().hex[:8]}"},
        "django": {"settings": "demo.settings", "path": [str(REPO / "example")]},
        "email": {"listen": f"127.0.0.1:{email_port}", "domains": ["demo.local"], "relay": "file://maildir",
                  "spool": str(directory / "spool"), "hostname": "gw.test", "grace_period": 5, "ack_timeout": 3},
        "websocket": {"listen": f"127.0.0.1:{ws_port}", "grace_period": 5,
                      "routes": [{"path": "^/echo/$", "channel": "websocket.echo"}]},
    }
    path = directory / "sentinel.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, email_port, ws_port


async def echo(port: int, text: str) -> str:
    async with websockets.connect(f"ws://127.0.0.1:{port}/echo/", open_timeout=5, close_timeout=2) as ws:
        await ws.send(text)
        return await asyncio.wait_for(ws.recv(), 5)


async def test_gateways_and_worker_follow_the_new_master_and_lose_no_accepted_mail(cluster, tmp_path):
    config, email_port, ws_port = write_config(tmp_path, cluster["sentinels"])
    processes: list[Daemon] = []
    layer = Layer(config)
    accepted: list[str] = []
    received: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        sequence = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", email_port, timeout=30) as smtp:
                    while not stop.is_set():
                        subject = f"c{number}-{sequence}"
                        sequence += 1
                        smtp.sendmail("you@example.test", ["inbox@demo.local"],
                                      f"From: you@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode())
                        with lock:
                            accepted.append(subject)  # only after the 250
                        time.sleep(0.005)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # a 451 while the layer fails over: retry, as an MTA would

    async def consume() -> None:
        while True:
            try:
                message = await layer.receive("email.receive", timeout=60)
                received[message["subject"]] = received.get(message["subject"], 0) + 1
                await layer.send(message["reply_channel"], {"type": "email.ack", "id": message["id"]})
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the test's own consumer rides out the failover too
                await asyncio.sleep(0.1)

    clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(2)]
    consumer: asyncio.Task | None = None
    try:
        processes.append(listening_gateway("email", config, email_port))
        processes.append(listening_gateway("websocket", config, ws_port))
        worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config),
                                           "websocket.echo"], env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3")})
        processes.append(worker)
        worker.wait_for_log("Running worker for channels", timeout=30)
        assert await echo(ws_port, "before") == "before"

        consumer = asyncio.create_task(consume())
        for thread in clients:
            thread.start()
        await asyncio.to_thread(wait_until, lambda: len(accepted) >= 100, 60,
                                "100 mails accepted before the failover")

        old = cluster["master"].port
        cluster["master"].proc.kill()  # kill -9: no shutdown, no last sync
        cluster["master"].proc.wait()
        killed_at = time.monotonic()
        before_kill = len(accepted)
        await asyncio.to_thread(wait_until, lambda: master_port(cluster["sentinels"]) != old, 60,
                                "the sentinels promoted the replica", 0.1)
        promoted = time.monotonic() - killed_at

        async def echo_answers() -> bool:
            try:
                return await echo(ws_port, "after") == "after"
            except Exception:  # noqa: BLE001 - not yet: the layer is failing over
                return False

        deadline = time.monotonic() + 60
        while not await echo_answers():
            assert time.monotonic() < deadline, (f"no WebSocket echo 60 s after the failover\n"
                                                 f"{processes[1].log()[-3000:]}\n{worker.log()[-3000:]}")
            await asyncio.sleep(0.2)
        echo_back = time.monotonic() - killed_at
        await asyncio.to_thread(wait_until, lambda: len(accepted) >= before_kill + 100, 60,
                                "100 more mails accepted after the failover")
        stop.set()
        for thread in clients:
            thread.join(30)
        with lock:
            expected = set(accepted)
        deadline = time.monotonic() + 90
        while not expected <= set(received):
            assert time.monotonic() < deadline, (f"lost after a 250: {sorted(expected - set(received))[:10]}\n"
                                                 f"{processes[0].log()[-3000:]}")
            await asyncio.sleep(0.1)
        duplicates = sum(count - 1 for count in received.values())
        print(f"\nsentinel failover: {len(expected)} mails accepted ({before_kill} before the kill), "
              f"{len(expected)} handled, 0 lost, {duplicates} duplicated; replica promoted after "
              f"{promoted:.1f} s, WebSocket echo through gateway worker back after {echo_back:.1f} s")
        for process in processes:
            assert process.proc.poll() is None, f"{process.name} exited:\n{process.log()[-3000:]}"
    finally:
        stop.set()
        if consumer is not None:
            consumer.cancel()
        await layer.close()
        for process in reversed(processes):
            process.stop()
