"""Dead letters from the gateways: a consumer's message a gateway could not carry
out for good (outbound), and mail no consumer acknowledged (inbound), are kept
besides what the spec sends, and an operator can replay them once the cause is
fixed. Real gateways, relay, broker, stand-in."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
import uuid

import pytest
from servers import PYTHON, REPO, async_wait_until

from gateways.core.config import LayerConfig, load_config
from gateways.core.deadletters import DeadLetter, DeadLetterStore
from gateways.core.layer import build_layer, close_layer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def dead_letters(config) -> list[DeadLetter]:
    store = DeadLetterStore.from_config(load_config(config))
    try:
        return await store.list()
    finally:
        await store.close()


async def one_dead_letter(config) -> DeadLetter:
    entries = await async_wait_until(lambda: dead_letters(config), timeout=30, what="a dead letter")
    assert len(entries) == 1, entries
    return entries[0]


def retry(config, entry_id: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "gateways", "dead-letters", "retry", entry_id, "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


async def request(config, channel: str, message: dict) -> dict:
    """Send ``message`` as a consumer would, with a reply channel; the gateway's answer."""
    layer = build_layer(load_config(config).layer)
    try:
        reply = await layer.new_channel()
        await layer.send(channel, {**message, "reply_channel": reply})
        return await asyncio.wait_for(layer.receive(reply), 30)
    finally:
        await close_layer(layer)


async def test_email_relay_5xx_is_dead_lettered_and_replayed_after_the_fix(redis_server, tmp_path):
    from email_stack import Relay, start_gateway, write_config

    relay = Relay().start()
    config, port = write_config(tmp_path, redis_server.url, relay=relay.url, senders=["@demo.local"])
    gateway = start_gateway(config, port)
    try:
        relay.handler.fail = ["554 5.7.1 rejected by policy"]
        send = {"type": "email.send", "id": "invoice-7", "from": "a@demo.local", "to": "you@example.test",
                "subject": "invoice", "text": "x"}
        failed = await request(config, "email.send", send)
        assert (failed["type"], failed["code"], failed["permanent"]) == ("email.failed", 554, True)

        entry = await one_dead_letter(config)
        assert (entry.protocol, entry.direction, entry.channel, entry.message_id, entry.attempts) == (
            "email", "outbound", "email.send", "invoice-7", 1)
        assert "554" in entry.error_line and "rejected by policy" in entry.error_line
        assert entry.message["subject"] == "invoice"

        replayed = retry(config, entry.id)  # the relay accepts now
        assert replayed.returncode == 0, replayed.stderr
        got = relay.handler.wait_for(1)
        assert got[0]["rcpt_tos"] == ["you@example.test"] and b"Subject: invoice" in got[0]["data"]
        assert await dead_letters(config) == []
    finally:
        code = gateway.stop()
        relay.stop()
    assert code == 0, gateway.log()


async def test_email_nobody_acknowledged_is_dead_lettered_and_replayed(redis_server, tmp_path):
    import smtplib

    from email_stack import Layer, start_gateway, write_config

    config, port = write_config(tmp_path, redis_server.url, ack_timeout=0.2, max_attempts=2)
    gateway = start_gateway(config, port)
    layer = Layer(config)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("you@example.test", ["inbox@demo.local"],
                            b"From: you@example.test\r\nSubject: unanswered\r\n\r\nbody\r\n")
        first = await layer.receive("email.receive")
        assert first["attempt"] == 1

        entry = await one_dead_letter(config)
        assert (entry.protocol, entry.direction, entry.channel, entry.message_id, entry.attempts) == (
            "email", "inbound", "email.receive", first["id"], 2)
        assert entry.error_line.startswith("NotAcknowledged") and "dead_letter" not in entry.message
        assert (await layer.receive("email.dead"))["id"] == first["id"]  # the spec's channel still gets it

        assert (await layer.receive("email.receive"))["attempt"] == 2
        replayed = retry(config, entry.id)
        assert replayed.returncode == 0, replayed.stderr
        again = await layer.receive("email.receive")
        assert again["id"] == first["id"] and b"unanswered" in again["raw"]
    finally:
        await layer.close()
        code = gateway.stop()
    assert code == 0, gateway.log()


async def test_mqtt_publish_that_cannot_be_made_is_dead_lettered(redis_server, mosquitto, tmp_path):
    from mqtt_stack import start_gateway, write_config

    config = write_config(tmp_path, redis_server.url, mosquitto.url, [{"filter": "dl/#", "channel": "mqtt.dl"}])
    gateway = start_gateway(config)
    try:
        publish = {"type": "mqtt.publish", "id": "p-1", "topic": "dl/+/wild", "payload": b"\x00\x01", "qos": 1}
        result = await request(config, "mqtt.send", publish)
        assert (result["type"], result["ok"]) == ("mqtt.result", False) and "wildcards" in result["error"]

        entry = await one_dead_letter(config)
        assert (entry.protocol, entry.direction, entry.channel, entry.message_id) == (
            "mqtt", "outbound", "mqtt.send", "p-1")
        assert "wildcards" in entry.error_line and entry.message["payload"] == b"\x00\x01"
        assert gateway.proc.poll() is None

        listen = load_config(config).sections["mqtt"].health.listen
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as response:
            scraped = response.read().decode()
        assert 'gateway_dead_letters{channel="mqtt.send"} 1' in scraped
        assert 'gateway_dead_letter_oldest_age_seconds{channel="mqtt.send"}' in scraped
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log()


async def test_mqtt_publish_refused_during_an_outage_is_replayed_once_the_broker_is_back(
        redis_server, mosquitto, tmp_path):
    from mqtt_stack import Subscriber, start_gateway, wait_for_count, write_config

    config = write_config(tmp_path, redis_server.url, mosquitto.url, [{"filter": "dl/#", "channel": "mqtt.dl"}],
                          outage_queue=1)
    gateway = start_gateway(config)
    layer = build_layer(load_config(config).layer)
    try:
        mosquitto.stop()
        gateway.wait_for_log("disconnected from", timeout=30)
        await layer.send("mqtt.send", {"type": "mqtt.publish", "id": "queued", "topic": "out/a", "payload": "a",
                                       "qos": 1})
        refused = await request(config, "mqtt.send", {"type": "mqtt.publish", "id": "refused", "topic": "out/b",
                                                      "payload": "b", "qos": 1})
        assert (refused["ok"], refused["id"]) == (False, "refused") and "outage_queue" in refused["error"]
        entry = await one_dead_letter(config)
        assert (entry.message_id, entry.direction, entry.channel) == ("refused", "outbound", "mqtt.send")

        mosquitto.start()
        wait_for_count(gateway, "subscribed to", 2)  # reconnected
        subscriber = Subscriber(mosquitto.port, "out/#")
        try:
            subscriber.ready("out/probe")
            replayed = retry(config, entry.id)
            assert replayed.returncode == 0, replayed.stderr
            subscriber.wait_for(lambda lines: any(line.startswith("out/b|") for line in lines))
        finally:
            subscriber.close()
        assert await dead_letters(config) == []
    finally:
        await close_layer(layer)
        code = gateway.stop()
    assert code == 0, gateway.log()


async def test_slack_api_error_is_dead_lettered_and_replayed_after_the_fix(redis_server, tmp_path):
    from slack.stack import start_gateway, write_config
    from slack.standin import SlackStandIn

    standin = SlackStandIn().start()
    config = write_config(tmp_path, redis_server.url, standin, f"dl{uuid.uuid4().hex[:8]}")
    gateway = start_gateway(config, standin, connections=1)
    try:
        chan = "C" + uuid.uuid4().hex[:9].upper()
        standin.fail_next("chat.postMessage", "internal_error")
        post = {"type": "slack.send", "action": "post", "channel": chan, "text": "deploy done", "id": "d-1"}
        result = await request(config, "slack.send", post)
        assert (result["ok"], result["error"]) == (False, "internal_error")

        entry = await one_dead_letter(config)
        assert (entry.protocol, entry.direction, entry.channel, entry.message_id) == (
            "slack", "outbound", "slack.send", "d-1")
        assert "internal_error" in entry.error_line and "chat.postMessage" in entry.error_line

        replayed = retry(config, entry.id)
        assert replayed.returncode == 0, replayed.stderr
        standin.wait_call("chat.postMessage", channel=chan, text="deploy done")
        assert await dead_letters(config) == []
    finally:
        code = gateway.stop()
        standin.stop()
    assert code == 0, gateway.log()


async def test_a_down_store_is_logged_and_the_gateway_goes_on(private_redis, tmp_path):
    """The store shares the layer's Redis: with it down, the failure is logged
    with the message id, and the gateway answers the next request once it is back."""
    from email_stack import Relay, start_gateway, write_config

    relay = Relay().start()
    config, port = write_config(tmp_path, private_redis.url, relay=relay.url, senders=["@demo.local"],
                                relay_attempts=2, relay_retry_initial=2, relay_retry_max=2)
    gateway = start_gateway(config, port)
    try:
        relay.handler.fail = ["451 4.3.0 later", "451 4.3.0 later"]
        layer = build_layer(LayerConfig(**{**load_config(config).layer.__dict__}))
        await layer.send("email.send", {"type": "email.send", "id": "lost-1", "from": "a@demo.local",
                                        "to": "you@example.test", "text": "x"})
        await close_layer(layer)
        gateway.wait_for_log("relay attempt 1 of", timeout=30)
        private_redis.stop()  # before the second (last) attempt fails
        gateway.wait_for_log("could not be dead-lettered", timeout=60)
        assert "lost-1" in gateway.log()
        private_redis.start()
        failed = await request(config, "email.send", {"type": "email.send", "id": "after", "from": "a@demo.local",
                                                      "to": "you@example.test", "text": "y"})
        assert failed["type"] == "email.sent"
        assert gateway.proc.poll() is None
    finally:
        code = gateway.stop()
        relay.stop()
    assert code == 0, gateway.log()
