"""End to end: mosquitto_pub -> Mosquitto -> gateway -> Redis -> runworker (demo echo consumer)
-> gateway -> Mosquitto -> mosquitto_sub, with GATEWAY_STRICT=1 checking every emitted message."""

from __future__ import annotations


import pytest

from mqtt_stack import LayerReader, Subscriber, mosquitto_pub, start_gateway, write_config
from servers import runworker

pytestmark = pytest.mark.e2e


@pytest.fixture
def echo_stack(tmp_path, redis_server, mosquitto, processes):
    config = write_config(tmp_path, redis_server.url, mosquitto.url, [
        {"filter": "echo/#", "qos": 2, "channel": "mqtt.echo"},
        {"filter": "ret/#", "qos": 1, "channel": "mqtt.ret"},
    ])
    worker = runworker(config, ["mqtt.echo"])
    processes.append(worker)
    worker.wait_for_log("Running worker for channels")
    gateway = start_gateway(config)
    processes.append(gateway)
    return config, gateway


@pytest.mark.parametrize("qos, delivered", [(0, 0), (1, 1), (2, 1)])
def test_round_trip_at_each_qos(echo_stack, mosquitto, processes, qos, delivered):
    sub = Subscriber(mosquitto.port, "echo-reply/#")
    processes.append(sub)
    sub.ready("echo-reply/probe")
    payload = f"hello at qos {qos}"
    mosquitto_pub(mosquitto.port, f"echo/room/{qos}", payload, qos)
    lines = sub.wait_for(lambda ls: any(line.startswith(f"echo-reply/room/{qos}|") for line in ls))
    (line,) = [line for line in lines if line.startswith(f"echo-reply/room/{qos}|")]
    # QoS 2 is served at QoS 1 (the gateway cannot hold PUBREC back), and echoed at what it got.
    assert line == f"echo-reply/room/{qos}|{delivered}|0|{payload}"


def test_binary_payload_and_mqtt5_properties_survive_the_round_trip(echo_stack, mosquitto, processes):
    sub = Subscriber(mosquitto.port, "echo-reply/#", fmt="%t|%q|%C|%R|%D|%P|%x")
    processes.append(sub)
    sub.ready("echo-reply/probe")
    payload = bytes(range(256))
    mosquitto_pub(mosquitto.port, "echo/props", payload, 1, "-V", "5",
                  "-D", "publish", "content-type", "application/octet-stream",
                  "-D", "publish", "response-topic", "answers/1",
                  "-D", "publish", "correlation-data", "corr-42",
                  "-D", "publish", "user-property", "k", "v1",
                  "-D", "publish", "user-property", "k", "v2")
    lines = sub.wait_for(lambda ls: any(line.startswith("echo-reply/props|") for line in ls))
    (line,) = [line for line in lines if line.startswith("echo-reply/props|")]
    topic, qos, content_type, response_topic, correlation, users, hex_payload = line.split("|")
    assert (qos, content_type, response_topic, correlation) == ("1", "application/octet-stream", "answers/1",
                                                               "corr-42")
    assert users.split() == ["k:v1", "k:v2"]  # order and duplicate keys kept
    assert bytes.fromhex(hex_payload) == payload


async def test_retained_messages_in_and_out(tmp_path, echo_stack, mosquitto, processes):
    config, _ = echo_stack
    mosquitto_pub(mosquitto.port, "ret/a", b"kept", 1, "-r")
    reader = LayerReader(config)
    try:
        # The gateway subscribed before the retained message existed: a live one has retain=False.
        (live,) = await reader.collect("mqtt.ret", lambda ms: len(ms) >= 1)
        assert (live["payload"], live["retain"]) == (b"kept", False)
        # A message retained before a (runtime) subscription existed arrives with retain=True.
        mosquitto_pub(mosquitto.port, "later/a", b"was retained", 1, "-r")
        reply = await reader.layer.new_channel()
        await reader.layer.send("mqtt.send", {"type": "mqtt.subscribe", "filter": "later/#", "qos": 1,
                                              "channel": "mqtt.ret", "reply_channel": reply, "id": "s1"})
        (result,) = await reader.collect(reply, lambda ms: len(ms) >= 1)
        assert result == {"type": "mqtt.result", "id": "s1", "request": "mqtt.subscribe", "ok": True,
                          "error": None, "filter": "later/#", "granted_qos": 1}
        (old,) = await reader.collect("mqtt.ret", lambda ms: len(ms) >= 1)
        assert (old["topic"], old["payload"], old["retain"], old["subscription"]) == \
            ("later/a", b"was retained", True, "later/#")
        # A retained publish from a consumer is retained by the broker.
        await reader.layer.send("mqtt.send", {"type": "mqtt.publish", "topic": "out/retained", "payload": b"r1",
                                              "qos": 1, "retain": True, "reply_channel": reply, "id": "p1"})
        (published,) = await reader.collect(reply, lambda ms: len(ms) >= 1)
        assert published == {"type": "mqtt.result", "id": "p1", "request": "mqtt.publish", "ok": True,
                             "error": None, "topic": "out/retained"}
    finally:
        await reader.close()
    late = Subscriber(mosquitto.port, "out/retained", qos=1)
    processes.append(late)
    assert late.wait_for(lambda ls: len(ls) >= 1)[0] == "out/retained|1|1|r1"


async def test_bad_requests_get_an_error_result_and_the_gateway_keeps_serving(echo_stack, mosquitto, processes):
    config, gateway = echo_stack
    reader = LayerReader(config)
    try:
        reply = await reader.layer.new_channel()
        await reader.layer.send("mqtt.send", {"type": "mqtt.publish", "topic": "a/#", "reply_channel": reply,
                                              "id": "bad1"})
        await reader.layer.send("mqtt.send", {"type": "mqtt.publish", "topic": "a", "payload": 42,
                                              "reply_channel": reply, "id": "bad2"})
        await reader.layer.send("mqtt.send", {"type": "mqtt.frobnicate", "reply_channel": reply})
        results = await reader.collect(reply, lambda ms: len(ms) >= 3)
    finally:
        await reader.close()
    by_id = {r["id"]: r for r in results}
    assert "wildcards" in by_id["bad1"]["error"] and not by_id["bad1"]["ok"]
    assert "payload" in by_id["bad2"]["error"]
    assert "unknown message type" in by_id[None]["error"]
    assert gateway.proc.poll() is None
    sub = Subscriber(mosquitto.port, "echo-reply/#")
    processes.append(sub)
    sub.ready("echo-reply/probe")
    mosquitto_pub(mosquitto.port, "echo/still", b"alive", 1)
    sub.wait_for(lambda ls: "echo-reply/still|1|0|alive" in ls)


async def test_consumer_publishes_at_each_qos_with_a_result_each(echo_stack, mosquitto, processes):
    config, _ = echo_stack
    sub = Subscriber(mosquitto.port, "out/#", qos=2)
    processes.append(sub)
    sub.ready("out/probe")
    reader = LayerReader(config)
    try:
        reply = await reader.layer.new_channel()
        for qos in (0, 1, 2):
            await reader.layer.send("mqtt.send", {"type": "mqtt.publish", "topic": f"out/{qos}", "payload": "é",
                                                  "qos": qos, "reply_channel": reply, "id": f"q{qos}"})
        results = await reader.collect(reply, lambda ms: len(ms) >= 3)
    finally:
        await reader.close()
    assert [(r["id"], r["ok"]) for r in results] == [("q0", True), ("q1", True), ("q2", True)]  # in order
    lines = sub.wait_for(lambda ls: sum(line.startswith("out/") and "probe" not in line for line in ls) >= 3)
    assert [line for line in lines if "probe" not in line] == ["out/0|0|0|é", "out/1|1|0|é", "out/2|2|0|é"]
