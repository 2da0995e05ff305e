"""The worker's retry policy in the YAML: defaults, per-channel keys over the
worker's, and `gateway check` naming each nonsense value at its line."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from gateways.core.config import ConfigError, RetryConfig, parse_config
from servers import PYTHON


def test_the_default_policy_retries():
    policy = parse_config("{}").worker.retry_for("mqtt.sensors")
    assert policy == RetryConfig(attempts=5, initial_delay=1.0, max_delay=30.0)


def test_a_channel_takes_its_own_keys_over_the_workers():
    config = parse_config(textwrap.dedent("""\
        worker:
          retry: {attempts: 3, initial_delay: 0.5}
          channels:
            mqtt.sensors:
              retry: {attempts: 10, max_delay: 60}
            email.inbox: {}
        """))
    assert config.worker.retry_for("mqtt.sensors") == RetryConfig(attempts=10, initial_delay=0.5, max_delay=60.0)
    assert config.worker.retry_for("email.inbox") == RetryConfig(attempts=3, initial_delay=0.5, max_delay=30.0)
    assert config.worker.retry_for("other") == RetryConfig(attempts=3, initial_delay=0.5, max_delay=30.0)


BAD = """\
worker:
  retry:
    attempts: 0
    initial_delay: 40
    max_delay: -1
  channels:
    mqtt.sensors:
      retry:
        initial_delay: 5
        max_delay: 2
    "not a channel!":
      retry: {attempts: 2}
    email.inbox:
      retry:
        attempts: 2.5
        backoff: 3
  retries: 4
"""

EXPECTED = [
    "3: worker.retry.attempts: 0 must be greater than 0",
    "5: worker.retry.max_delay: -1.0 must be greater than 0",
    "4: worker.retry.initial_delay: initial_delay (40.0) is more than max_delay (-1.0)",
    "8: worker.channels.mqtt.sensors.retry: initial_delay (5.0) is more than max_delay (2.0)",
    "11: worker.channels.not a channel!: 'not a channel!' is not a valid channel name",
    "15: worker.channels.email.inbox.retry.attempts: expected integer or null, got 2.5",
    "16: worker.channels.email.inbox.retry.backoff: unknown key (known: attempts, initial_delay, max_delay)",
    "17: worker.retries: unknown key (known: channels, retry)",
]


def test_nonsense_is_reported_at_its_line():
    with pytest.raises(ConfigError) as info:
        parse_config(BAD, "bad.yaml")
    text = str(info.value)
    for line in EXPECTED:
        assert f"bad.yaml:{line}" in text, text
    assert len(info.value.problems) == len(EXPECTED), text


@pytest.mark.integration
def test_gateway_check_rejects_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = subprocess.run([PYTHON, "-m", "gateways", "check", "--config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    for line in EXPECTED:
        assert f"{path}:{line}" in result.stdout + result.stderr, result.stdout + result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("worker:\n  retry: {attempts: 2}\n  channels:\n    mqtt.sensors:\n      retry: {attempts: 1}\n")
    result = subprocess.run([PYTHON, "-m", "gateways", "check", "--config", str(good)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
