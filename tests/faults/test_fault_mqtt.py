"""Poison MQTT payloads against a real gateway, Mosquitto and Redis: each becomes
``mqtt.undecodable``, the link stays up and what follows it arrives."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import yaml

from mqtt_stack import LayerReader, mosquitto_pub, start_gateway, write_config

pytestmark = pytest.mark.e2e


def healthz(config) -> tuple[int, dict]:
    """The gateway's /healthz status and body."""
    listen = yaml.safe_load(config.read_text())["mqtt"]["health"]["listen"]
    try:
        with urllib.request.urlopen(f"http://{listen}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_json_nested_too_deep_is_undecodable_and_the_stream_goes_on(tmp_path, redis_server, mosquitto,
                                                                          processes):
    config = write_config(tmp_path, redis_server.url, mosquitto.url,
                          [{"filter": "poison/#", "qos": 1, "channel": "mqtt.poison", "decode": "json"}])
    gateway = start_gateway(config)
    processes.append(gateway)
    deep = b"[" * 5000 + b"]" * 5000
    big = json.dumps("x" * (1 << 20)).encode()
    mosquitto_pub(mosquitto.port, "poison/a", deep, 1)
    mosquitto_pub(mosquitto.port, "poison/a", big, 1)
    reader = LayerReader(config)
    try:
        messages = await reader.collect("mqtt.poison", lambda ms: len(ms) >= 2, timeout=60)
    finally:
        await reader.close()
    poison, after = messages
    assert poison["type"] == "mqtt.undecodable"
    assert poison["payload"] == deep
    assert poison["error"].startswith("json: ")
    assert "deep" in poison["error"] or "recursion" in poison["error"]
    assert after["type"] == "mqtt.publish" and after["payload"] == "x" * (1 << 20)
    status, body = healthz(config)
    assert status == 200, body
    assert gateway.stop() == 0
    assert "Traceback" not in gateway.log()
