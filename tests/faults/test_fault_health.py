"""/healthz of an idle gateway follows Redis: 503 while it is away, 200 again
within seconds of its return, with no traffic to notice either."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import yaml

import email_stack
import mqtt_stack

pytestmark = pytest.mark.e2e


def healthz(config, protocol: str) -> tuple[int, dict]:
    """The gateway's /healthz status and body."""
    listen = yaml.safe_load(config.read_text())[protocol]["health"]["listen"]
    try:
        with urllib.request.urlopen(f"http://{listen}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for_health(config, protocol: str, status: int, timeout: float, gateway) -> dict:
    """Poll /healthz until it answers ``status``; return its body."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = healthz(config, protocol)
        if code == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz still {code} {body} after {timeout}s:\n{gateway.log()}")
        time.sleep(0.1)


def start(protocol: str, tmp_path, redis, mosquitto):
    if protocol == "mqtt":
        config = mqtt_stack.write_config(tmp_path, redis.url, mosquitto.url,
                                         [{"filter": "idle/#", "qos": 1, "channel": "mqtt.idle"}])
        return config, mqtt_stack.start_gateway(config)
    config, port = email_stack.write_config(tmp_path, redis.url)
    return config, email_stack.start_gateway(config, port)


@pytest.mark.parametrize("protocol", ["mqtt", "email"])
def test_idle_gateway_health_follows_redis_out_and_back(protocol, tmp_path, private_redis, mosquitto, processes):
    config, gateway = start(protocol, tmp_path, private_redis, mosquitto)
    processes.append(gateway)
    wait_for_health(config, protocol, 200, 20, gateway)
    private_redis.stop()
    body = wait_for_health(config, protocol, 503, 20, gateway)
    assert body["layer"] is False
    private_redis.start()  # the same port
    body = wait_for_health(config, protocol, 200, 5, gateway)
    assert body["layer"] is True
    assert gateway.stop() == 0
