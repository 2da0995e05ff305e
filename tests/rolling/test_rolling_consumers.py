"""The rolling restart of docs/worker.md (start the new ``gateway worker``, then
stop the old one) loses nothing for the email, MQTT and Slack consumers while
traffic keeps flowing: every accepted mail is answered once and acknowledged,
every MQTT QoS 1 message is handled, every Slack event is handled once.

Real redis-server, real gateway and worker processes, the demo project's
consumers, real clients (smtplib, mosquitto_pub/sub, the Slack stand-in).
"""

from __future__ import annotations

import collections
import email
import smtplib
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(TESTS / "email"), str(TESTS / "mqtt")]

from consumers.testing.slack_standin import SlackStandIn, event_callback, message_event
from email_stack import Relay, start_gateway as start_email_gateway, write_config as email_config
from mqtt_stack import Subscriber, mosquitto_pub, start_gateway as start_mqtt_gateway, write_config as mqtt_config
from roll_stack import Traffic, gateway_worker, rolling_restart
from servers import REPO, free_port, gateway_daemon  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met in {timeout}s"
        time.sleep(0.05)


def test_email_rolling_restart_answers_and_acknowledges_every_mail(redis_server, tmp_path):
    relay = Relay().start()
    config, port = email_config(tmp_path, redis_server.url, django=True, relay=relay.url)
    gateway = start_email_gateway(config, port)
    workers = [gateway_worker(config, ["email.receive"], tmp_path)]
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)

    def send(i: int) -> None:
        client.sendmail("you@example.test", ["echo@demo.local"],
                        f"From: you@example.test\r\nSubject: m{i}\r\n\r\nbody {i}\r\n".encode())

    try:
        traffic = Traffic(send, pause=0.02)
        traffic.wait_sent(20)
        rolling_restart(workers, lambda: gateway_worker(config, ["email.receive"], tmp_path))
        traffic.wait_sent(20)
        sent = traffic.stop()
        replies = relay.handler.wait_for(sent, timeout=90)
        new = tmp_path / f"spool-{port}" / "new"
        wait_until(lambda: not any(new.iterdir()), what="every spooled mail acknowledged")
        subjects = collections.Counter(email.message_from_bytes(r["data"])["Subject"] for r in replies)
        assert subjects == collections.Counter(f"Re: m{i}" for i in range(sent))
    finally:
        client.close()
        for worker in workers:
            worker.stop()
        gateway.stop()
        relay.stop()


def test_mqtt_rolling_restart_handles_every_qos1_message(redis_server, mosquitto, tmp_path):
    config = mqtt_config(tmp_path, redis_server.url, mosquitto.url,
                         [{"filter": "echo/#", "qos": 1, "channel": "mqtt.echo"}])
    settings = yaml.safe_load(config.read_text())
    settings["django"]["path"] = [str(REPO / "example")]  # the stack's path is relative to tests/
    config.write_text(yaml.safe_dump(settings))
    workers = [gateway_worker(config, ["mqtt.echo"], tmp_path)]
    gateway = start_mqtt_gateway(config)
    sub = Subscriber(mosquitto.port, "echo-reply/#", fmt="%t|%p", qos=1)
    try:
        sub.ready("echo-reply/probe")

        def send(i: int) -> None:
            mosquitto_pub(mosquitto.port, "echo/roll", f"m{i}", 1)

        traffic = Traffic(send, pause=0.0)
        traffic.wait_sent(20)
        rolling_restart(workers, lambda: gateway_worker(config, ["mqtt.echo"], tmp_path))
        traffic.wait_sent(20)
        sent = traffic.stop()
        expected = {f"echo-reply/roll|m{i}" for i in range(sent)}
        # QoS 1 may deliver twice; what counts is that none is missing.
        sub.wait_for(lambda lines: expected <= set(lines), timeout=90)
    finally:
        sub.close()
        for worker in workers:
            worker.stop()
        gateway.stop()


def test_slack_rolling_restart_handles_every_event_once(redis_server, tmp_path):
    standin = SlackStandIn().start()
    config = tmp_path / "slack.yaml"
    config.write_text(yaml.safe_dump({
        "layer": {"url": redis_server.url, "prefix": f"rs{uuid.uuid4().hex[:8]}"},
        "django": {"settings": "demo.settings", "path": [str(REPO / "example")]},
        "slack": {"app_token": standin.app_token, "bot_token": standin.bot_token, "api_url": standin.api_url,
                  "default_channel": "slack.receive", "grace_period": 5,
                  "health": {"listen": f"127.0.0.1:{free_port()}"}},
    }))
    gateway = gateway_daemon("slack", config)
    workers: list = []
    try:
        standin.wait_connections(1, timeout=30)
        gateway.wait_for_log("Socket Mode connected", timeout=30)
        workers.append(gateway_worker(config, ["slack.receive"], tmp_path))
        channels = [f"CROLL{n}" for n in range(5)]
        envelopes: list[str] = []

        def send(i: int) -> None:
            body = event_callback(message_event(channels[i % len(channels)], f"echo e{i}"))
            envelopes.append(standin.send_envelope("events_api", body))

        traffic = Traffic(send, pause=0.01)
        traffic.wait_sent(20)
        rolling_restart(workers, lambda: gateway_worker(config, ["slack.receive"], tmp_path))
        traffic.wait_sent(20)
        sent = traffic.stop()

        def posted() -> collections.Counter:
            return collections.Counter(c.params.get("text") for c in standin.calls_of("chat.postMessage")
                                       if c.status == 200)

        wait_until(lambda: len(posted()) >= sent, timeout=90, what="every event answered")
        assert posted() == collections.Counter(f"e{i}" for i in range(sent))
        for envelope in envelopes:
            standin.wait_ack(envelope)
    finally:
        for worker in workers:
            worker.stop()
        gateway.stop()
        standin.stop()
