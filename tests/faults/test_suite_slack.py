"""Slack fault suite: kill -9 each moving part mid-stream and count.

The test plays Slack: it sends `events_api` envelopes through the stand-in's
Socket Mode connections and, as Slack does, sends an event again (same
`event_id`, a higher `retry_attempt`) while no ack came. An event counts as
sent once acked; a real `gateway worker` records each message it handles.
The spec acks only after the hand-off and deduplicates retries by
`event_id`, so a kill of the gateway, of the layer's Redis (AOF) or of one of
two instances, or Slack's side vanishing (every socket cut without a close,
the stand-in down, then back), loses nothing. A killed `gateway worker`
loses what it had taken from the layer and not handled: the spec's promise
ends at the layer, and the row shows how many.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from consumers.testing.slack_standin import SlackStandIn, event_callback, message_event
from faultsuite import AofRedis, Ledger, Traffic, django_section, kill, run_fault, worker, write_yaml
from servers import Daemon, gateway_daemon

pytestmark = pytest.mark.e2e

CHANNEL = "fault.slack"
SLACK_CHANNEL = "C0FAULT"


class SlackStack:
    protocol = "slack"

    def __init__(self, directory: Path, ledger: Ledger, instances: int = 1) -> None:
        self.directory = directory
        self.ledger = ledger
        self.redis = AofRedis().start()
        self.standin = SlackStandIn().start()
        prefix = f"fs{uuid.uuid4().hex[:6]}"
        self.configs = [write_yaml(directory / f"slack-{n}.yaml", {
            "layer": {"url": self.redis.url, "prefix": prefix},
            "django": django_section(),
            "slack": {"app_token": self.standin.app_token, "bot_token": self.standin.bot_token,
                      "api_url": self.standin.api_url, "ping_interval": 1, "default_channel": CHANNEL,
                      "grace_period": 5},
        }) for n in range(instances)]
        self.gateways: list[Daemon] = []
        for config in self.configs:
            self.gateways.append(self.start_gateway(config))
        self.worker = worker(self.configs[0], CHANNEL, ledger, directory)

    def start_gateway(self, config: Path) -> Daemon:
        daemon = gateway_daemon("slack", config)
        daemon.wait_for_log("Socket Mode connected", timeout=30)
        return daemon

    def open_client(self, number: int) -> "SlackSide":
        return SlackSide(self.standin)

    def kill(self, part: str) -> None:
        if part == "gateway":
            kill(self.gateways[0])
            self.gateways[0] = self.start_gateway(self.configs[0])
        elif part == "worker":
            kill(self.worker)
            self.worker = worker(self.configs[0], CHANNEL, self.ledger, self.directory)
        elif part == "redis":
            kill(self.redis)
            self.redis.start()
        elif part == "slack":
            port = self.standin.port
            self.standin.drop_sockets()
            self.standin.stop()
            self.standin.start(port=port)
        elif part == "instance":
            kill(self.gateways[0])  # instance 1 keeps its connection; Slack retries there
        else:
            raise ValueError(part)

    def after_traffic(self, part: str) -> None:
        pass

    def close(self) -> None:
        for daemon in [self.worker, *self.gateways]:
            daemon.stop()
        self.standin.stop()
        self.redis.close()


class SlackSide:
    """Slack delivering one event: send, and send again until acked."""

    def __init__(self, standin: SlackStandIn) -> None:
        self.standin = standin

    def send(self, key: str) -> None:
        body = event_callback(message_event(SLACK_CHANNEL, key))
        for attempt in range(10):
            try:
                envelope = self.standin.send_envelope("events_api", body, retry_attempt=attempt,
                                                      retry_reason="timeout" if attempt else "")
                self.standin.wait_ack(envelope, timeout=3)
                return
            except (AssertionError, TimeoutError, ConnectionError, RuntimeError):
                continue  # no ack (or no connection yet): Slack retries the same event_id
        raise TimeoutError(f"{key}: no ack after 10 deliveries")

    def close(self) -> None:
        pass


@pytest.fixture
def ledger():
    ledger = Ledger()
    yield ledger
    ledger.close()


@pytest.mark.parametrize("part", ["gateway", "worker", "redis", "slack", "instance"])
def test_slack_loses_no_acked_event(part, ledger, tmp_path):
    stack = SlackStack(tmp_path, ledger, instances=2 if part == "instance" else 1)
    try:
        row, lost = run_fault(stack, part, Traffic(stack.open_client, clients=2), ledger)
        assert row.sent >= 120
        if part == "worker":
            assert len(lost) <= 64, f"{len(lost)} lost with the worker"
        else:
            assert not lost, f"lost after the ack: {sorted(lost)[:10]}\n{stack.gateways[0].log()[-3000:]}"
        assert row.duplicated == 0 or part == "worker", "an event handled twice: the dedup failed"
    finally:
        stack.close()
