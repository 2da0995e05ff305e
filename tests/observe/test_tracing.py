"""One trace per message: a WebSocket frame (an MQTT message, a mail, a Slack
message) through a real gateway, the layer and a real `gateway worker`, and the
echo going out, as the spans both processes export (to a file each, one JSON
object per line)."""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import websockets
import yaml

from gateways.core import tracing
from servers import PYTHON, REPO, Daemon, gateway_daemon, wait_for_port, wait_until

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "websocket"), str(TESTS / "mqtt"), str(TESTS / "email")]
import email_stack  # noqa: E402
import mqtt_stack  # noqa: E402
from slack.stack import write_config as slack_config  # noqa: E402
from slack.standin import SlackStandIn, event_callback, message_event  # noqa: E402
from ws_stack import CHANNELS, ORIGIN, write_config  # noqa: E402


def spans(path: Path) -> list[dict]:
    """The spans exported to ``path`` so far."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _chain(gateway_spans: Path, worker_spans: Path, channel: str, inbound: str,
           outbound: str) -> tuple[dict, dict, dict]:
    """Wait for the hand-off of ``inbound`` on ``channel``, the worker's span of it and the
    gateway's span of ``outbound`` going out, each the child of the one before."""
    handoff = wait_until(lambda: [s for s in spans(gateway_spans) if s["name"] == f"send {channel}"
                                  and s["attributes"].get("gateway.message.type") == inbound],
                         15, f"the gateway's span of the {inbound} hand-off")[0]
    trace_id = handoff["context"]["trace_id"]
    processed = wait_until(lambda: [s for s in spans(worker_spans) if s["name"] == f"process {channel}"
                                    and s["context"]["trace_id"] == trace_id],
                           15, "the worker's span in the same trace")[0]
    delivered = wait_until(lambda: [s for s in spans(gateway_spans) if s["name"] == f"deliver {outbound}"
                                    and s["context"]["trace_id"] == trace_id],
                           15, f"the gateway's span of the {outbound} going out, in the same trace")[0]
    assert processed["parent_id"] == handoff["context"]["span_id"]
    assert delivered["parent_id"] == processed["context"]["span_id"]
    return handoff, processed, delivered


def test_tracing_is_off_without_the_environment_asking():
    assert not tracing.enabled()
    message = {"type": "websocket.receive", "trace": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}}
    assert tracing.consuming(message, "websocket.echo") is tracing.consuming({}, None)  # the shared no-op


@pytest.mark.e2e
async def test_a_frame_and_its_echo_share_one_trace(redis_server, tmp_path):
    config, port = write_config(tmp_path, redis_server.url)
    gateway_spans, worker_spans = tmp_path / "gateway.jsonl", tmp_path / "worker.jsonl"
    gateway = gateway_daemon("websocket", config, env={tracing.FILE_VARIABLE: str(gateway_spans)})
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), *CHANNELS],
                    env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3"), tracing.FILE_VARIABLE: str(worker_spans)})
    try:
        wait_for_port(port, timeout=30)
        worker.wait_for_log("Running worker for channels", timeout=30)
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo/", origin=ORIGIN, open_timeout=15) as ws:
            await ws.send("traced frame")
            assert await asyncio.wait_for(ws.recv(), 15) == "traced frame"
        handoff, processed, _ = await asyncio.to_thread(_chain, gateway_spans, worker_spans, "websocket.echo",
                                                        "websocket.receive", "websocket.send")
        trace_id = handoff["context"]["trace_id"]
        assert handoff["kind"] == "SpanKind.PRODUCER"
        assert handoff["resource"]["attributes"]["service.name"] == "gateway-websocket"
        assert processed["resource"]["attributes"]["service.name"] == "gateway-worker"
        # Each message its own trace: the connect was another one.
        connects = [s for s in spans(gateway_spans) if s["attributes"].get("gateway.message.type") == "websocket.connect"]
        assert connects and all(s["context"]["trace_id"] != trace_id for s in connects)
    finally:
        worker.stop()
        gateway.stop()


@pytest.mark.e2e
def test_an_mqtt_message_and_its_echo_share_one_trace(redis_server, mosquitto, tmp_path):
    config = mqtt_stack.write_config(tmp_path, redis_server.url, mosquitto.url,
                                     [{"filter": "echo/#", "qos": 1, "channel": "mqtt.echo"}])
    settings = yaml.safe_load(config.read_text())
    settings["django"]["path"] = [str(REPO / "example")]  # the stack's path is relative to tests/
    config.write_text(yaml.safe_dump(settings))
    gateway_spans, worker_spans = tmp_path / "gateway.jsonl", tmp_path / "worker.jsonl"
    started = []
    try:
        worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), "mqtt.echo"],
                        env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3"),
                             tracing.FILE_VARIABLE: str(worker_spans)})
        started.append(worker)
        worker.wait_for_log("Running worker for channels", timeout=30)
        gateway = gateway_daemon("mqtt", config, env={tracing.FILE_VARIABLE: str(gateway_spans)})
        started.append(gateway)
        mqtt_stack.wait_for_count(gateway, "subscribed to", 1)
        subscriber = mqtt_stack.Subscriber(mosquitto.port, "echo-reply/#")
        started.append(subscriber)
        subscriber.ready("echo-reply/probe")
        mqtt_stack.mosquitto_pub(mosquitto.port, "echo/traced", "traced", 1)
        subscriber.wait_for(lambda lines: any(line.startswith("echo-reply/traced|") for line in lines))
        _chain(gateway_spans, worker_spans, "mqtt.echo", "mqtt.publish", "mqtt.publish")
    finally:
        for process in reversed(started):
            process.close() if hasattr(process, "close") else process.stop()


@pytest.mark.e2e
def test_a_mail_and_its_answer_share_one_trace(redis_server, tmp_path):
    relay = email_stack.Relay().start()
    config, port = email_stack.write_config(tmp_path, redis_server.url, django=True, relay=relay.url)
    gateway_spans, worker_spans = tmp_path / "gateway.jsonl", tmp_path / "worker.jsonl"
    gateway = gateway_daemon("email", config, env={tracing.FILE_VARIABLE: str(gateway_spans)})
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config),
                                       "email.receive"],
                    env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3"), tracing.FILE_VARIABLE: str(worker_spans)})
    try:
        wait_for_port(port, timeout=30)
        worker.wait_for_log("Running worker for channels", timeout=30)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("you@example.test", ["echo@demo.local"],
                            b"From: you@example.test\r\nSubject: traced\r\n\r\nbody\r\n")
        relay.handler.wait_for(1, timeout=60)
        # The mail goes to the layer in a batch (send_many): its span is still its own.
        _chain(gateway_spans, worker_spans, "email.receive", "email.receive", "email.send")
    finally:
        worker.stop()
        gateway.stop()
        relay.stop()


@pytest.mark.e2e
def test_a_slack_message_and_its_answer_share_one_trace(redis_server, tmp_path):
    standin = SlackStandIn().start()
    config = slack_config(tmp_path, redis_server.url, standin, f"tr{uuid.uuid4().hex[:8]}")
    gateway_spans, worker_spans = tmp_path / "gateway.jsonl", tmp_path / "worker.jsonl"
    gateway = gateway_daemon("slack", config, env={tracing.FILE_VARIABLE: str(gateway_spans)})
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config),
                                       "slack.receive"],
                    env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3"), tracing.FILE_VARIABLE: str(worker_spans)})
    try:
        standin.wait_connections(1, timeout=30)
        gateway.wait_for_log("Socket Mode connected", timeout=30)
        worker.wait_for_log("Running worker for channels", timeout=30)
        standin.send_envelope("events_api", event_callback(message_event("CTRACED", "echo traced")))
        standin.wait_call("chat.postMessage", channel="CTRACED", text="traced")
        _chain(gateway_spans, worker_spans, "slack.receive", "slack.message", "slack.send")
    finally:
        worker.stop()
        gateway.stop()
        standin.stop()


@pytest.mark.integration
def test_without_the_extra_tracing_stays_off_and_says_why(tmp_path):
    """The environment asks for tracing where opentelemetry cannot be imported:
    a warning naming the extra, and nothing wrapped."""
    script = (
        "import logging, sys\n"
        "sys.modules['opentelemetry'] = None  # as if the extra were not installed\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from gateways.core import tracing\n"
        "class Runtime:\n"
        "    protocol = 'websocket'\n"
        "    async def send(self, channel, message): pass\n"
        "runtime = Runtime()\n"
        "tracing.instrument_runtime(runtime)\n"
        "print('enabled', tracing.enabled(), 'wrapped', 'send' in vars(runtime))\n"
    )
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, "OTEL_TRACES_EXPORTER": "console",
                                 tracing.FILE_VARIABLE: str(tmp_path / "spans.jsonl")})
    assert result.returncode == 0, result.stderr
    assert "enabled False wrapped False" in result.stdout
    assert "channels-gateways[otel]" in result.stderr
    assert not (tmp_path / "spans.jsonl").exists()
