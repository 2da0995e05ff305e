"""A WebSocket test stack: real gateway processes and a real runworker on real Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import yaml

from servers import PYTHON, REPO, Daemon, free_port, listening_gateway, runworker

PROJECT = Path(__file__).resolve().parent / "project"
ORIGIN = "http://good.example"
CHANNELS = ["websocket.echo", "websocket.chat", "websocket.reject", "websocket.state", "websocket.check",
            "websocket.room", "websocket.autostate", "websocket.slowaccept"]


def write_config(directory: Path, redis_url: str, prefix: str | None = None, **overrides) -> tuple[Path, int]:
    """A YAML file for one gateway on a free port; returns its path and the port."""
    port = free_port()
    section = {
        "listen": f"127.0.0.1:{port}",
        "accept_timeout": 3,
        "max_message_size": 65536,
        "allowed_origins": [ORIGIN],
        "grace_period": 5,
        "health": {"listen": f"127.0.0.1:{free_port()}"},
        "routes": [
            {"path": "^/echo/$", "channel": "websocket.echo"},
            {"path": "^/chat/(?P<room>[A-Za-z0-9_-]+)/$", "channel": "websocket.chat"},
            {"path": "^/reject/$", "channel": "websocket.reject"},
            {"path": r"^/state/(?P<user>\w+)/$", "channel": "websocket.state"},
            {"path": "^/silent/$", "channel": "websocket.nobody"},
            {"path": "^/auto/$", "channel": "websocket.nobody", "auto_accept": True},
            # The README's route: any word characters, non-ASCII and long ones included.
            {"path": r"^/ws/chat/(?P<room>\w+)/$", "channel": "websocket.room"},
            {"path": "^/auto-echo/$", "channel": "websocket.echo", "auto_accept": True},
            {"path": r"^/auto-state/(?P<user>\w+)/$", "channel": "websocket.autostate", "auto_accept": True},
            {"path": "^/auto-check/$", "channel": "websocket.check", "auto_accept": True},
            {"path": r"^/slow/(?P<room>\w+)/$", "channel": "websocket.slowaccept"},
            {"path": "^/.*$", "channel": "websocket.check"},
        ],
        **overrides,
    }
    config = {
        "layer": {"url": redis_url, "prefix": prefix or f"t{uuid.uuid4().hex[:8]}"},
        "django": {"settings": "wstest.settings", "path": [str(PROJECT), str(REPO / "example")]},
        "websocket": section,
    }
    path = directory / f"ws-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def start_gateway(config: Path, port: int) -> Daemon:
    """Start a gateway and wait until it listens."""
    return listening_gateway("websocket", config, port)


def start_worker(config: Path) -> Daemon:
    """Start runworker for the test project's channels and wait until it runs."""
    worker = runworker(config, CHANNELS, settings="wstest.settings", pythonpath=[PROJECT])
    worker.wait_for_log("Running worker for channels")
    return worker


def start_gateway_worker(config: Path, directory: Path, channels: list[str] | None = None) -> Daemon:
    """Start ``gateway worker`` (concurrent across connections) for the test project's
    channels and wait until it runs."""
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config),
                                       *(channels or CHANNELS)],
                    env={"DEMO_DATABASE": str(directory / "db.sqlite3")})
    worker.wait_for_log("Running worker for channels", timeout=30)
    return worker
