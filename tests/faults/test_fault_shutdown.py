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
#: The core's bound (grace, 5 s to close, 3 s more before the exit watchdog), plus slack for a loaded machine.
BOUND = GRACE + 5 + 3 + 5


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


#: A real MQTT gateway whose close() misbehaves as asked: it blocks the event loop, or
#: waits forever swallowing every cancellation.
STUCK_GATEWAY = """
import asyncio, sys, time
from gateways.core.config import load_config
from gateways.core.daemon import run_gateway
from gateways.core.logs import setup_logging
from gateways.mqtt.daemon import MqttGateway

class Stuck(MqttGateway):
    async def close(self):
        await super().close()
        if sys.argv[2] == "blocks":
            time.sleep(600)
        while True:
            try:
                await asyncio.sleep(600)
            except asyncio.CancelledError:
                pass

setup_logging()
sys.exit(run_gateway(Stuck, load_config(sys.argv[1])))
"""


@pytest.mark.parametrize("how", ["blocks", "ignores-cancel"])
def test_sigterm_ends_a_gateway_whose_close_never_returns(tmp_path, redis_server, mosquitto, processes, how):
    """The shutdown gives up on close() after 5 s; what still holds the process
    then (a blocked loop, or a task the loop's own teardown waits for) meets
    the exit watchdog: exit code 1, with a line saying so."""
    from servers import PYTHON, Daemon
    from mqtt_stack import wait_for_count

    config = write_config(tmp_path, redis_server.url, mosquitto.url,
                          [{"filter": "stuck/#", "qos": 1, "channel": "mqtt.stuck"}], grace_period=GRACE)
    gateway = Daemon("stuck", [PYTHON, "-c", STUCK_GATEWAY, str(config), how])
    processes.append(gateway)
    wait_for_count(gateway, "subscribed to", 1)
    gateway.proc.terminate()
    try:
        assert gateway.proc.wait(BOUND) == 1, gateway.log()
    except subprocess.TimeoutExpired:
        pytest.fail(f"gateway still running {BOUND}s after SIGTERM:\n{gateway.log()}")
    assert f"still running {GRACE + 5 + 3:.1f}s after the stop request; exiting now" in gateway.log()
    if how == "ignores-cancel":
        assert "closing connections took over 5.0s" in gateway.log()
