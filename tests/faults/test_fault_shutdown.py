"""SIGTERM ends a gateway within its grace period plus a few seconds whatever
state its tasks are in: here the broker is gone with consumers' requests
queued for it, and every layer operation hangs on a frozen Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml

from mqtt_stack import LayerReader, start_gateway, write_config

pytestmark = pytest.mark.e2e

GRACE = 2
#: What the core allows closing after the grace period, plus slack for a loaded machine.
BOUND = GRACE + 5 + 5


def health(config) -> dict:
    """The gateway's /healthz body."""
    listen = yaml.safe_load(config.read_text())["mqtt"]["health"]["listen"]
    try:
        with urllib.request.urlopen(f"http://{listen}/healthz", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


async def test_sigterm_with_the_layer_frozen_exits_within_the_grace_period(tmp_path, private_redis, mosquitto,
                                                                           processes):
    config = write_config(tmp_path, private_redis.url, mosquitto.url,
                          [{"filter": "stuck/#", "qos": 1, "channel": "mqtt.stuck"}], grace_period=GRACE)
    gateway = start_gateway(config)
    processes.append(gateway)
    mosquitto.stop()
    reader = LayerReader(config)
    try:
        for n in range(5):  # each one's failure report would wait for the frozen layer
            await reader.layer.send("mqtt.send", {"type": "mqtt.publish", "id": str(n), "topic": "stuck/a",
                                                  "payload": "x", "qos": 1, "reply_channel": "test.results"})
    finally:
        await reader.close()
    deadline = time.monotonic() + 20
    while health(config).get("queued") != 5:
        assert time.monotonic() < deadline, gateway.log()
        await asyncio.sleep(0.05)
    os.kill(private_redis.proc.pid, signal.SIGSTOP)  # connections stay open, nothing answers
    try:
        gateway.proc.terminate()
        try:
            code = gateway.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gateway still running {BOUND}s after SIGTERM:\n{gateway.log()}")
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    assert code == 0, gateway.log()
