"""`gateway up` with the demo's mqtt section: Mosquitto as a stack service, echo answered."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
import yaml

from gateways.core.config import parse_config
from gateways.core.gateway import StackUnavailable
from gateways.mqtt import daemon as mqtt_daemon
from gateways.mqtt.daemon import MqttGateway
from mqtt_stack import Subscriber, mosquitto_pub
from servers import REPO, Daemon, free_port, require_binary


def section(broker: str):
    return parse_config(f"mqtt:\n  broker: {broker}\n", "t.yaml").sections["mqtt"]


@pytest.mark.integration
def test_stack_service_is_mosquitto_on_the_brokers_port(monkeypatch):
    monkeypatch.setattr(mqtt_daemon.shutil, "which", lambda name: f"/usr/sbin/{name}")
    port = free_port()
    (service,) = MqttGateway.stack_services(section(f"mqtt://127.0.0.1:{port}"), None)
    assert (service.name, service.argv, service.port) == ("mosquitto", ["/usr/sbin/mosquitto", "-p", str(port)],
                                                          port)


@pytest.mark.integration
def test_no_mosquitto_says_in_one_line_how_to_add_mqtt(monkeypatch):
    monkeypatch.setattr(mqtt_daemon.shutil, "which", lambda name: None)
    with pytest.raises(StackUnavailable) as info:
        MqttGateway.stack_services(section(f"mqtt://127.0.0.1:{free_port()}"), None)
    assert "apt-get install mosquitto" in str(info.value) and "\n" not in str(info.value)


def test_a_remote_or_running_broker_needs_no_service(mosquitto, monkeypatch):
    monkeypatch.setattr(mqtt_daemon.shutil, "which", lambda name: None)
    assert MqttGateway.stack_services(section("mqtt://broker.example:1883"), None) == []
    assert MqttGateway.stack_services(section(mosquitto.url), None) == []


def test_consumer_channels_are_the_subscriptions_channels():
    config = parse_config("mqtt:\n  broker: mqtt://h\n  subscriptions:\n    - {filter: a, channel: x.one}\n"
                          "    - {filter: b}\n", "t.yaml")
    assert MqttGateway.consumer_channels(config.sections["mqtt"]) == ["mqtt.publish", "x.one"]
    only = parse_config("mqtt:\n  broker: mqtt://h\n  subscriptions:\n    - {filter: a, channel: x.one}\n", "t.yaml")
    assert MqttGateway.consumer_channels(only.sections["mqtt"]) == ["x.one"]
    bare = parse_config("mqtt:\n  broker: mqtt://h\n", "t.yaml")
    assert MqttGateway.consumer_channels(bare.sections["mqtt"]) == ["mqtt.publish"]


def test_the_conversation_is_the_topic():
    from gateways.mqtt.protocol import Received, Subscription, inbound_message, result_message

    _, one = inbound_message(Received("a/1", b""), Subscription("a/+"), "mqtt.send")
    _, two = inbound_message(Received("a/2", b"\xff"), Subscription("a/+", decode="text"), "mqtt.send")
    assert MqttGateway.conversation_key(one) == "a/1"
    assert MqttGateway.conversation_key(two) == "a/2"  # mqtt.undecodable too
    assert MqttGateway.conversation_key(result_message({"id": "x"}, True)) is None


@pytest.mark.e2e
async def test_gateway_up_answers_echo_on_echo_reply(tmp_path, processes):
    require_binary("mosquitto", "mosquitto")
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    port = free_port()
    demo["mqtt"]["broker"] = f"mqtt://127.0.0.1:{port}"
    config = {"django": {**demo["django"], "path": [str(REPO / "example")]}, "mqtt": demo["mqtt"]}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    up = Daemon("up", [sys.executable, "-m", "gateways", "up", "--config", str(path)],
                env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3")})
    processes.append(up)
    up.wait_for_log("subscribed to echo/#", timeout=60)
    up.wait_for_log("Running worker for channels", timeout=60)
    sub = Subscriber(port, "echo-reply/#")
    processes.append(sub)
    sub.ready("echo-reply/probe")
    mosquitto_pub(port, "echo/x", "hi", 0)
    sub.wait_for(lambda lines: "echo-reply/x|0|0|hi" in lines)
    up.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(up.proc.wait, 40) == 0
    log = up.log()
    assert "mqtt gateway stopped" in log
    assert "mosquitto | " in log and "Opening ipv4 listen socket on port %d" % port in log
