"""Poison MQTT payloads against a real gateway, Mosquitto and Redis: each becomes
``mqtt.undecodable``, the link stays up and what follows it arrives."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import yaml

from mqtt_stack import LayerReader, mosquitto_pub, start_gateway, wait_for_count, write_config

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


async def test_burst_of_5000_subscribes_while_connected_all_succeed(tmp_path, redis_server, mosquitto, processes):
    config = write_config(tmp_path, redis_server.url, mosquitto.url,
                          [{"filter": "fixed/#", "qos": 1, "channel": "mqtt.fixed"}])
    gateway = start_gateway(config)
    processes.append(gateway)
    count = 5000  # five times mqtt.outage_queue
    reader = LayerReader(config)
    try:
        requests = [{"type": "mqtt.subscribe", "id": str(n), "filter": f"burst/{n}", "qos": 1,
                     "channel": "mqtt.burst", "reply_channel": "test.burst"} for n in range(count)]
        for start in range(0, count, 500):
            taken = await reader.layer.send_many("mqtt.send", requests[start:start + 500])
            assert taken == 500
        results = await reader.collect("test.burst", lambda ms: len(ms) >= count, timeout=120)
        refused = [r for r in results if not r["ok"]]
        assert not refused, refused[:3]
        assert sorted(int(r["id"]) for r in results) == list(range(count))
        for n in (0, count // 2, count - 1):
            mosquitto_pub(mosquitto.port, f"burst/{n}", f"to {n}".encode(), 1)
        got = await reader.collect("mqtt.burst", lambda ms: len(ms) >= 3, timeout=30)
        assert sorted(m["subscription"] for m in got) == sorted(f"burst/{n}" for n in (0, count // 2, count - 1))
        # After a reconnect the gateway subscribes to all of them again, in one go.
        mosquitto.restart()
        wait_for_count(gateway, "subscribed to", 2)
        mosquitto_pub(mosquitto.port, f"burst/{count - 2}", b"after the restart", 1)
        again = await reader.collect("mqtt.burst", lambda ms: len(ms) >= 1, timeout=30)
    finally:
        await reader.close()
    assert again[0]["subscription"] == f"burst/{count - 2}"
    assert gateway.stop() == 0


async def test_poison_redelivered_after_a_restart_no_longer_stops_the_stream(tmp_path, redis_server, mosquitto,
                                                                           processes):
    config = write_config(tmp_path, redis_server.url, mosquitto.url,
                          [{"filter": "again/#", "qos": 1, "channel": "mqtt.again", "decode": "json"}],
                          client_id="poison-again")
    gateway = start_gateway(config)
    processes.append(gateway)
    assert gateway.stop() == 0  # the broker keeps the session, and queues for it
    deep = b"{\"a\":" * 5000 + b"1" + b"}" * 5000
    mosquitto_pub(mosquitto.port, "again/x", deep, 1)
    mosquitto_pub(mosquitto.port, "again/x", b'{"ok": true}', 1)
    gateway = start_gateway(config)
    processes.append(gateway)
    reader = LayerReader(config)
    try:
        messages = await reader.collect("mqtt.again", lambda ms: len(ms) >= 2, timeout=60)
    finally:
        await reader.close()
    assert [m["type"] for m in messages] == ["mqtt.undecodable", "mqtt.publish"]
    assert messages[1]["payload"] == {"ok": True}
    assert healthz(config)[0] == 200
    assert gateway.stop() == 0
    # Acknowledged: a third start gets nothing again.
    gateway = start_gateway(config)
    processes.append(gateway)
    reader = LayerReader(config)
    try:
        assert await reader.nothing_more("mqtt.again", 2) == []
    finally:
        await reader.close()
