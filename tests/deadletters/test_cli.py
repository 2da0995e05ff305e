"""``gateway dead-letters`` as an operator runs it: a subprocess over the same YAML."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from channels_redis.core import RedisChannelLayer
from servers import PYTHON, REPO

from gateways.core.config import load_config
from gateways.core.deadletters import DeadLetterStore


def gateway(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "gateways", "dead-letters", *args, "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def config(redis_server, tmp_path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"layer:\n  url: {redis_server.url}\n  prefix: cli{uuid.uuid4().hex[:8]}\n")
    return path


async def _seed(config: Path) -> list[str]:
    store = DeadLetterStore.from_config(load_config(config))
    now = time.time()
    try:
        return [
            await store.add(protocol="email", channel="email.send", direction="outbound",
                            message={"type": "email.send", "id": "send-1", "raw": b"\xff\x00"},
                            error="SMTPDataError: (554, b'rejected')\nTraceback (most recent call last):\n  ...",
                            attempts=5, first_failure=now - 60, last_failure=now),
            await store.add(protocol="mqtt", channel="sensors",
                            message={"type": "mqtt.message", "id": "m1", "payload": b"21.5"},
                            error="ValueError: bad reading", attempts=3, first_failure=now - 5, last_failure=now),
        ]
    finally:
        await store.close()


async def test_list_show_and_drop(config):
    send_id, mqtt_id = await _seed(config)
    listed = gateway(config, "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "PROTOCOL", "DIRECTION", "CHANNEL"]
    assert [row.split()[0] for row in rows] == [send_id, mqtt_id]
    assert "SMTPDataError: (554, b'rejected')" in rows[0] and "Traceback" not in listed.stdout

    only = json.loads(gateway(config, "list", "--channel", "sensors", "--json").stdout)
    assert [(e["id"], e["message"]["payload"]) for e in only] == [(mqtt_id, {"bytes": "21.5"})]

    shown = gateway(config, "show", send_id)
    assert shown.returncode == 0, shown.stderr
    assert '"base64": "/wA="' in shown.stdout and "Traceback (most recent call last)" in shown.stdout
    assert "direction:     outbound" in shown.stdout

    assert gateway(config, "show", "nope").returncode == 1
    assert gateway(config, "drop", "nope").returncode == 1
    dropped = gateway(config, "drop", mqtt_id)
    assert dropped.returncode == 0 and mqtt_id in dropped.stdout
    dropped = gateway(config, "drop", "--all")
    assert dropped.returncode == 0 and "dropped 1 dead letter(s)" in dropped.stdout
    assert gateway(config, "list").stdout.strip() == "no dead letters"


async def test_retry_re_delivers_on_the_layer_and_removes_the_entry(config):
    send_id, mqtt_id = await _seed(config)
    settings = load_config(config).layer
    layer = RedisChannelLayer(hosts=[settings.url], prefix=settings.prefix)
    try:
        assert gateway(config, "retry", "nope").returncode == 1
        retried = gateway(config, "retry", mqtt_id)
        assert retried.returncode == 0, retried.stderr
        assert f"re-sent {mqtt_id} on sensors" in retried.stdout
        assert await layer.receive("sensors") == {"type": "mqtt.message", "id": "m1", "payload": b"21.5"}

        retried = gateway(config, "retry", "--all", "--channel", "email.send")
        assert retried.returncode == 0, retried.stderr
        assert "retried 1 of 1" in retried.stdout
        assert (await layer.receive("email.send"))["raw"] == b"\xff\x00"
        assert gateway(config, "list").stdout.strip() == "no dead letters"
    finally:
        await layer.close_pools()


@pytest.mark.integration
def test_bad_config_and_unreachable_redis(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("layer:\n  url: redis://127.0.0.1:1/0\ndead_letters:\n  max_entries: 0\n")
    answer = gateway(bad, "list")
    assert answer.returncode == 2 and "dead_letters.max_entries" in answer.stderr
    bad.write_text("layer:\n  url: redis://127.0.0.1:1/0\n")
    answer = gateway(bad, "list")
    assert answer.returncode == 3 and "cannot reach the dead-letter store" in answer.stderr
    assert gateway(bad, "retry", "x", "--channel", "c").returncode == 2
