"""WebSocket fault suite: kill -9 each moving part mid-stream and count.

Clients write text frames and wait for each echo before the next; a real
`gateway worker` records every frame it handles, then echoes it. WebSocket
has no acknowledgement and the spec promises no redelivery: a frame counts
as sent once written, and what may be lost at a failure is what was in
flight then, at most one frame per client (the client sees its connection
close, or no echo, and knows). Parts: the gateway (clients reconnect to the
restarted one), `gateway worker`, the layer's Redis (AOF; the gateway closes
its connections with 1013 while the layer is down), and one of two
instances (its clients reconnect to the other).
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from websockets.sync.client import connect

from faultsuite import AofRedis, Ledger, Traffic, django_section, kill, run_fault, worker, write_yaml
from servers import free_port, listening_gateway

pytestmark = pytest.mark.e2e

CHANNEL = "fault.websocket"
CLIENTS = 4


class WebSocketStack:
    protocol = "websocket"

    def __init__(self, directory: Path, ledger: Ledger, instances: int = 1) -> None:
        self.directory = directory
        self.ledger = ledger
        self.redis = AofRedis().start()
        prefix = f"fw{uuid.uuid4().hex[:6]}"
        self.ports = [free_port() for _ in range(instances)]
        self.configs = [write_yaml(directory / f"ws-{n}.yaml", {
            "layer": {"url": self.redis.url, "prefix": prefix},
            "django": django_section(),
            "websocket": {"listen": f"127.0.0.1:{port}", "grace_period": 5,
                          "routes": [{"path": "^/record/$", "channel": CHANNEL}]},
        }) for n, port in enumerate(self.ports)]
        self.gateways = [listening_gateway("websocket", config, port)
                         for config, port in zip(self.configs, self.ports)]
        self.worker = worker(self.configs[0], CHANNEL, ledger, directory)
        self.written: set[str] = set()
        self.lock = threading.Lock()

    def open_client(self, number: int) -> "EchoClient":
        order = self.ports[number % len(self.ports):] + self.ports[:number % len(self.ports)]
        for port in order:
            try:
                return EchoClient(port, self)
            except OSError:
                continue
        raise OSError("no instance answers")

    def kill(self, part: str) -> None:
        if part == "gateway":
            kill(self.gateways[0])
            self.gateways[0] = listening_gateway("websocket", self.configs[0], self.ports[0])
        elif part == "worker":
            kill(self.worker)
            self.worker = worker(self.configs[0], CHANNEL, self.ledger, self.directory)
        elif part == "redis":
            kill(self.redis)
            self.redis.start()
        elif part == "instance":
            kill(self.gateways[0])
        else:
            raise ValueError(part)

    def after_traffic(self, part: str) -> None:
        pass

    def close(self) -> None:
        for daemon in [self.worker, *self.gateways]:
            daemon.stop()
        self.redis.close()


class EchoClient:
    """Writes a frame, records it as written, waits for its echo."""

    def __init__(self, port: int, stack: WebSocketStack) -> None:
        self.stack = stack
        self.connection = connect(f"ws://127.0.0.1:{port}/record/", open_timeout=5, close_timeout=1)
        self.ws = self.connection.__enter__()

    def send(self, key: str) -> None:
        self.ws.send(key)
        with self.stack.lock:
            self.stack.written.add(key)
        echo = self.ws.recv(timeout=10)
        assert echo == key, f"echo {echo!r} for {key!r}"

    def close(self) -> None:
        self.connection.__exit__(None, None, None)


@pytest.fixture
def ledger():
    ledger = Ledger()
    yield ledger
    ledger.close()


@pytest.mark.parametrize("part", ["gateway", "worker", "redis", "instance"])
def test_websocket_loses_at_most_the_frames_in_flight(part, ledger, tmp_path):
    stack = WebSocketStack(tmp_path, ledger, instances=2 if part == "instance" else 1)
    try:
        row, lost = run_fault(stack, part, Traffic(stack.open_client, clients=CLIENTS), ledger,
                              written=stack.written)
        assert row.sent >= 120
        assert len(lost) <= CLIENTS, f"{len(lost)} frames lost, more than one in flight per client: {sorted(lost)}"
        assert row.duplicated == 0, "a frame handled twice"
    finally:
        stack.close()
