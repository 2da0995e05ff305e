"""A Slack test stack: the stand-in, real `gateway slack` processes and a real
runworker of the demo project, on a real redis-server."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml

from servers import REPO, Daemon, free_port, gateway_daemon, runworker

from .standin import SlackStandIn

SECRET = "s3cret-signing"


def write_config(directory: Path, redis_url: str, standin: SlackStandIn, prefix: str, **overrides: Any) -> Path:
    """A YAML file for one Slack gateway with Socket Mode and an Events API listener."""
    http_port = free_port()
    section = {
        "app_token": standin.app_token,
        "bot_token": standin.bot_token,
        "api_url": standin.api_url,
        "listen": f"127.0.0.1:{http_port}",
        "signing_secret": SECRET,
        "ping_interval": 1,
        "default_channel": "slack.receive",
        "grace_period": 5,
        "api_retries": 3,
        "health": {"listen": f"127.0.0.1:{free_port()}"},
        **overrides,
    }
    config = {
        "layer": {"url": redis_url, "prefix": prefix},
        "django": {"settings": "demo.settings", "path": [str(REPO / "example")]},
        "slack": section,
    }
    path = directory / f"slack-{http_port}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def events_url(config: Path) -> str:
    """The Events API URL of the gateway configured by ``config``."""
    section = yaml.safe_load(config.read_text())["slack"]
    return f"http://{section['listen']}/slack/events"


def health_url(config: Path) -> str:
    """The /healthz URL of the gateway configured by ``config``."""
    section = yaml.safe_load(config.read_text())["slack"]
    return f"http://{section['health']['listen']}/healthz"


def start_gateway(config: Path, standin: SlackStandIn, connections: int) -> Daemon:
    """Start a gateway and wait until the stand-in has ``connections`` sockets open."""
    daemon = gateway_daemon("slack", config)
    try:
        standin.wait_connections(connections, timeout=30)
        daemon.wait_for_log("Socket Mode connected", timeout=30)
    except (TimeoutError, AssertionError) as exc:
        daemon.stop()
        raise AssertionError(f"gateway did not connect ({exc}):\n{daemon.log()}")
    return daemon


def start_worker(config: Path) -> Daemon:
    """runworker for the demo's Slack channel."""
    worker = runworker(config, ["slack.receive"])
    worker.wait_for_log("Running worker for channels", timeout=30)
    return worker
