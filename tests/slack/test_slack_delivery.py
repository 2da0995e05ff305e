"""The delivery guarantees: ack only after the hand-off, dedup across
instances, bounded waits for consumer acks, and the demo's done criterion."""

from __future__ import annotations

import json
import uuid

import pytest

from servers import PYTHON, REPO, Daemon, runworker

from .stack import SECRET, events_url, start_gateway, start_worker, write_config
from .standin import SlackStandIn, command_payload, event_callback, message_event, post_signed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def standin():
    server = SlackStandIn().start()
    yield server
    server.stop()


def channel() -> str:
    return "C" + uuid.uuid4().hex[:9].upper()


def texts(standin: SlackStandIn, chan: str) -> list[str]:
    return [c.params.get("text") for c in standin.calls_of("chat.postMessage", channel=chan) if c.status == 200]


def test_a_retry_reaching_another_instance_is_not_delivered_twice(redis_server, standin, tmp_path):
    prefix = f"d{uuid.uuid4().hex[:8]}"
    first = start_gateway(write_config(tmp_path, redis_server.url, standin, prefix), standin, connections=1)
    second = start_gateway(write_config(tmp_path, redis_server.url, standin, prefix), standin, connections=2)
    worker = start_worker(write_config(tmp_path, redis_server.url, standin, prefix))
    try:
        chan = channel()
        body = event_callback(message_event(chan, "echo just once"))
        original = standin.send_envelope("events_api", body, socket=0)
        standin.wait_call("chat.postMessage", channel=chan, text="just once")
        standin.wait_ack(original)
        retry = standin.send_envelope("events_api", body, socket=1, retry_attempt=1, retry_reason="timeout")
        standin.wait_ack(retry)
        standin.send_envelope("events_api", event_callback(message_event(chan, "echo marker")), socket=1)
        standin.wait_call("chat.postMessage", channel=chan, text="marker")
        assert texts(standin, chan) == ["just once", "marker"]
        assert "already delivered" in second.log()
    finally:
        codes = [first.stop(), second.stop()]
        worker.stop()
    assert codes == [0, 0]


def test_no_ack_while_the_layer_is_down_and_the_retry_is_delivered(private_redis, standin, tmp_path):
    config = write_config(tmp_path, private_redis.url, standin, f"l{uuid.uuid4().hex[:8]}")
    gateway = start_gateway(config, standin, connections=1)
    # Stock runworker exits when Redis goes away; `gateway worker` waits for it.
    worker = Daemon("worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), "slack.receive"],
                    env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3")})
    worker.wait_for_log("Running worker for channels", timeout=30)
    try:
        chan = channel()
        standin.send_envelope("events_api", event_callback(message_event(chan, "echo warm-up")))
        standin.wait_call("chat.postMessage", channel=chan, text="warm-up")
        private_redis.stop()
        body = event_callback(message_event(chan, "echo survived"))
        lost = standin.send_envelope("events_api", body)
        gateway.wait_for_log("not handed off", timeout=60)
        assert lost not in standin.acks  # Slack keeps it and retries
        status, _ = post_signed(events_url(config), json.dumps(body).encode(), SECRET)
        assert status == 503  # the Events API says "retry" the HTTP way
        private_redis.start()
        retry = standin.send_envelope("events_api", body, retry_attempt=1, retry_reason="timeout")
        standin.wait_ack(retry, timeout=60)
        standin.wait_call("chat.postMessage", channel=chan, text="survived", timeout=60)
        assert lost not in standin.acks
    finally:
        code = gateway.stop()
        worker.stop()
    assert code == 0, gateway.log()


def test_a_command_nobody_answers_is_acked_empty_after_ack_timeout(redis_server, standin, tmp_path):
    config = write_config(tmp_path, redis_server.url, standin, f"a{uuid.uuid4().hex[:8]}", ack_timeout=0.5)
    gateway = start_gateway(config, standin, connections=1)  # and no worker
    try:
        envelope = standin.send_envelope("slash_commands", command_payload("/echo", "anyone?", channel()))
        ack = standin.wait_ack(envelope)
        assert ack.payload is None
        gateway.wait_for_log("no slack.ack on")
        status, body = post_signed(events_url(config), json.dumps(
            event_callback(message_event(channel(), "echo x"))).encode(), SECRET)
        assert (status, body) == (200, b"")
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log()


def test_demo_config_pointed_at_the_standin_echoes(private_redis, standin):
    """The issue's done criterion, with config/demo.yaml itself."""
    env = {"SLACK_APP_TOKEN": standin.app_token, "SLACK_BOT_TOKEN": standin.bot_token,
           "SLACK_API_URL": standin.api_url, "GATEWAY_LAYER_URL": private_redis.url}
    demo = REPO / "config" / "demo.yaml"
    # The layer URL comes from --layer for the daemon, GATEWAY_LAYER_URL for the worker.
    worker = None
    gateway = Daemon("slack-demo", [PYTHON, "-m", "gateways", "slack", "--config", str(demo),
                                    "--layer", private_redis.url], env={"GATEWAY_STRICT": "1", **env})
    try:
        standin.wait_connections(1)
        worker = runworker(demo, ["slack.receive"], env=env)
        worker.wait_for_log("Running worker for channels", timeout=30)
        standin.send_envelope("events_api", event_callback(message_event("C0DEMO", "echo hi")))
        call = standin.wait_call("chat.postMessage", channel="C0DEMO", text="hi")
        assert call.params == {"channel": "C0DEMO", "text": "hi"}
    finally:
        code = gateway.stop()
        if worker is not None:
            worker.stop()
    assert code == 0, gateway.log()


def test_gateway_worker_keeps_each_slack_channels_order(redis_server, standin, tmp_path):
    """`gateway worker` runs conversations concurrently; a Slack channel is one."""
    config = write_config(tmp_path, redis_server.url, standin, f"o{uuid.uuid4().hex[:8]}")
    gateway = start_gateway(config, standin, connections=1)
    worker = Daemon("worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), "slack.receive"],
                    env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3")})
    worker.wait_for_log("Running worker for channels", timeout=30)
    try:
        chans = [channel() for _ in range(3)]
        expected = {chan: [f"{chan}-{i}" for i in range(15)] for chan in chans}
        for i in range(15):
            for chan in chans:
                standin.send_envelope("events_api", event_callback(message_event(chan, f"echo {chan}-{i}")))
        standin.wait_for(lambda: all(len(texts(standin, c)) == 15 for c in chans), timeout=60, what="45 echoes")
        assert {chan: texts(standin, chan) for chan in chans} == expected
    finally:
        code = gateway.stop()
        worker.stop()
    assert code == 0, gateway.log()


def test_sigterm_finishes_the_deliveries_in_flight_before_closing(redis_server, standin, tmp_path):
    import urllib.request

    from .stack import health_url

    config = write_config(tmp_path, redis_server.url, standin, f"t{uuid.uuid4().hex[:8]}")
    gateway = start_gateway(config, standin, connections=1)  # no worker: the command's ack waits
    metrics_url = health_url(config).replace("/healthz", "/metrics")

    def received() -> bool:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            return 'gateway_slack_envelopes_total{kind="slash_commands"} 1' in response.read().decode()

    try:
        envelope = standin.send_envelope("slash_commands", command_payload("/echo", "late", channel()))
        standin.wait_for(received, timeout=30, what="the envelope at the gateway")
        gateway.proc.terminate()
        assert standin.wait_ack(envelope, timeout=30).payload is None  # acked while draining
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log()
    assert "no slack.ack on" in gateway.log()
