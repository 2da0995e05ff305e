"""mqtts:// with a private CA and a user name and password from the environment."""

from __future__ import annotations

import pytest

from mqtt_stack import LayerReader, SecureMosquitto, wait_for_count, write_config
from servers import gateway_daemon, require_binary

pytestmark = pytest.mark.e2e


@pytest.fixture
def secure_broker(processes):
    broker = SecureMosquitto().start()
    processes.append(broker)
    return broker


def publish(broker: SecureMosquitto, topic: str, payload: str) -> None:
    import subprocess

    binary = require_binary("mosquitto_pub", "mosquitto-clients")
    subprocess.run([binary, "-h", "localhost", "-p", str(broker.port), *broker.client_args(), "-t", topic,
                    "-m", payload, "-q", "1"], check=True, timeout=30)


async def test_tls_and_password_from_the_environment(tmp_path, redis_server, secure_broker, processes,
                                                     monkeypatch):
    monkeypatch.setenv("MQTT_PW", secure_broker.password)  # for this process's reading of the file
    config = write_config(tmp_path, redis_server.url, secure_broker.url,
                          [{"filter": "secure/#", "qos": 1, "channel": "mqtt.secure"}],
                          ca_file=str(secure_broker.ca), username=secure_broker.user, password="${MQTT_PW}")
    gateway = gateway_daemon("mqtt", config, env={"MQTT_PW": secure_broker.password})
    processes.append(gateway)
    wait_for_count(gateway, "subscribed to", 1)
    publish(secure_broker, "secure/1", "over tls")
    reader = LayerReader(config)
    try:
        (message,) = await reader.collect("mqtt.secure", lambda ms: len(ms) >= 1)
    finally:
        await reader.close()
    assert (message["topic"], message["payload"]) == ("secure/1", b"over tls")


def test_a_wrong_password_is_logged_and_retried_not_fatal(tmp_path, redis_server, secure_broker, processes):
    config = write_config(tmp_path, redis_server.url, secure_broker.url, [{"filter": "secure/#"}],
                          ca_file=str(secure_broker.ca), username=secure_broker.user, password="wrong")
    gateway = gateway_daemon("mqtt", config)
    processes.append(gateway)
    wait_for_count(gateway, "reconnecting", 1)
    assert gateway.proc.poll() is None
    assert "subscribed to" not in gateway.log()
    assert gateway.stop() == 0


def test_an_unknown_ca_is_refused(tmp_path, redis_server, secure_broker, processes):
    config = write_config(tmp_path, redis_server.url, secure_broker.url, [{"filter": "secure/#"}],
                          username=secure_broker.user, password=secure_broker.password)  # system CAs only
    gateway = gateway_daemon("mqtt", config)
    processes.append(gateway)
    wait_for_count(gateway, "reconnecting", 1)
    assert "certificate verify failed" in gateway.log()
    assert "subscribed to" not in gateway.log()
