"""manage.py commands reach the layer `gateway up` embeds, through its runtime file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from gateways.core.layer import (
    LayerNotFound,
    channel_layers_setting,
    configured_channel_layer,
    runtime_file,
    write_runtime_file,
)
from servers import PYTHON, REPO, Daemon, free_port, wait_for_port

pytestmark = pytest.mark.e2e

SEND_RECEIVE = """
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
layer = get_channel_layer()
async_to_sync(layer.send)("shell.test", {"type": "shell.test", "payload": b"\\x00bytes"})
print("RECEIVED", async_to_sync(layer.receive)("shell.test"))
"""

# An inbound MQTT message for the demo's echo consumer, whose answer comes back on a reply channel.
ECHO_THROUGH_RUNWORKER = """
import asyncio
from channels.layers import get_channel_layer

async def main():
    layer = get_channel_layer()
    reply = await layer.new_channel()
    await layer.send("mqtt.echo", {
        "type": "mqtt.publish", "id": "m1", "topic": "echo/x", "payload": b"hi", "qos": 1, "retain": False,
        "dup": False, "subscription": "echo/#", "properties": {}, "reply_channel": reply})
    print("ANSWER", await asyncio.wait_for(layer.receive(reply), 20))

asyncio.run(main())
"""


def _manage(*argv: str) -> list[str]:
    return [PYTHON, str(REPO / "example" / "manage.py"), *argv]


def _env(config, tmp_path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("GATEWAY_LAYER_URL", "GATEWAY_CONFIG", "DJANGO_SETTINGS_MODULE")}
    return {**inherited, "GATEWAY_CONFIG": str(config), "DEMO_DATABASE": str(tmp_path / "db.sqlite3"),
            "DJANGO_SETTINGS_MODULE": "demo.settings"}


@pytest.fixture
def demo_up(tmp_path):
    """`gateway up` of a demo-like config without layer.url: the layer is embedded."""
    port, smtp_port = free_port(), free_port()
    config = {
        "django": {"settings": "demo.settings", "path": [str(REPO / "example")]},
        "websocket": {"listen": f"127.0.0.1:{port}",
                      "routes": [{"path": "^/echo/$", "channel": "websocket.echo"}]},
        "email": {"listen": f"127.0.0.1:{smtp_port}", "domains": ["demo.local"], "relay": "file://maildir",
                  "spool": str(tmp_path / "spool")},
    }
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    up = Daemon("up", [sys.executable, "-m", "gateways", "up", "--config", str(path)],
                env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3")})
    wait_for_port(port, timeout=30)
    wait_for_port(smtp_port, timeout=30)
    up.wait_for_log("Running worker for channels")
    yield up, path
    up.stop()


def test_manage_py_shell_and_runworker_use_the_embedded_layer(demo_up, tmp_path):
    up, config = demo_up
    record = json.loads(runtime_file(config).read_text())
    assert record["pid"] == up.proc.pid and record["url"].startswith("redis://127.0.0.1:")
    env = _env(config, tmp_path)

    shell = subprocess.run(_manage("shell", "-c", SEND_RECEIVE), env=env,
                           capture_output=True, text=True, timeout=60)
    assert "RECEIVED {'type': 'shell.test', 'payload': b'\\x00bytes'}" in shell.stdout, shell.stderr

    # The stack runs no worker for mqtt.echo: this runworker is the only consumer.
    worker = Daemon("runworker", _manage("runworker", "mqtt.echo"), env=env)
    try:
        worker.wait_for_log("Running worker for channels", timeout=30)
        client = subprocess.run(_manage("shell", "-c", ECHO_THROUGH_RUNWORKER), env=env,
                                capture_output=True, text=True, timeout=60)
        assert "ANSWER {'type': 'mqtt.publish', 'topic': 'echo-reply/x', 'payload': b'hi', 'qos': 1" \
            in client.stdout, client.stderr + worker.log()
    finally:
        worker.stop()

    # Django's own mail, through the demo's EMAIL_BACKEND and the stack's email gateway.
    test_mail = subprocess.run(_manage("sendtestemail", "someone@example.test"), env=env,
                               capture_output=True, text=True, timeout=60)
    assert test_mail.returncode == 0, test_mail.stderr
    maildir = config.parent / "maildir" / "new"
    deadline = time.monotonic() + 30
    while not (files := list(maildir.glob("*")) if maildir.exists() else []):
        assert time.monotonic() < deadline, up.log()
        time.sleep(0.05)
    delivered = files[0].read_bytes()
    assert b"Subject: Test email from" in delivered and b"Delivered-To: someone@example.test" in delivered

    assert up.stop() == 0
    assert not runtime_file(config).exists(), "a clean stop removes the runtime file"


def test_without_gateway_up_the_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_LAYER_URL", raising=False)
    config = tmp_path / "gateway.yaml"
    config.write_text("log:\n  level: INFO\n")
    setting = channel_layers_setting(str(config))["default"]
    assert setting["BACKEND"] == "gateways.core.layer.configured_channel_layer"
    with pytest.raises(LayerNotFound, match=r"`gateway up` does not run: start `gateway up --config .*"
                                            r"or set layer.url"):
        configured_channel_layer(**setting["CONFIG"])

    # A runtime file left by a gateway up that was killed: its pid is gone.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runtime_file(config).write_text(json.dumps({"url": "redis://127.0.0.1:1/0", "pid": dead.pid}))
    with pytest.raises(LayerNotFound, match=rf"left by a `gateway up` \(pid {dead.pid}\) that is gone"):
        configured_channel_layer(**setting["CONFIG"])

    # A live gateway's is used: this process plays it.
    write_runtime_file(config, "redis://127.0.0.1:7001/0")
    layer = configured_channel_layer(**setting["CONFIG"])
    assert layer.hosts[0]["address"] == "redis://127.0.0.1:7001/0"

    # The same pid, reused by a process that started at another time: stale.
    record = json.loads(runtime_file(config).read_text())
    assert record["pid"] == os.getpid() and record["started"]
    runtime_file(config).write_text(json.dumps({**record, "started": "1"}))
    with pytest.raises(LayerNotFound, match="that is gone"):
        configured_channel_layer(**setting["CONFIG"])


def test_a_broken_file_still_imports_settings_and_fails_at_first_use(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_LAYER_URL", raising=False)
    config = tmp_path / f"{uuid.uuid4().hex}.yaml"
    config.write_text("layer:\n  capacity: -1\n")
    setting = channel_layers_setting(str(config))["default"]
    from gateways.core.config import ConfigError

    with pytest.raises(ConfigError, match=r":2: layer.capacity: -1 must be greater than 0"):
        configured_channel_layer(**setting["CONFIG"])
