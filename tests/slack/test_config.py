"""The slack: section: validation, what `gateway up` asks, the documented reference."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateways.core.config import ConfigError, load_config, parse_config, reference
from gateways.core.gateway import StackUnavailable
from gateways.slack.config import SlackSection
from gateways.slack.daemon import SlackGateway

REPO = Path(__file__).resolve().parents[2]


def section(text: str) -> SlackSection:
    return parse_config(text, environ={}).sections["slack"]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ={})
    return [str(p) for p in info.value.problems]


def test_defaults_and_env_references():
    config = parse_config("slack:\n  app_token: ${A}\n  bot_token: ${B}\n",
                          environ={"A": "xapp-1", "B": "xoxb-2"})
    s = config.sections["slack"]
    assert (s.app_token, s.bot_token, s.api_url, s.default_channel) == (
        "xapp-1", "xoxb-2", "https://slack.com/api/", "slack.receive")


def test_outbound_channel_is_a_deprecated_name_of_send_channel(caplog):
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        found = section("slack:\n  outbound_channel: slack.out\n")
    assert found.send_channel == "slack.out"
    assert "slack.outbound_channel is deprecated; call it slack.send_channel" in caplog.text
    both = problems("slack:\n  outbound_channel: a.b\n  send_channel: c.d\n")
    assert any("slack.outbound_channel: deprecated name of slack.send_channel, which is also set" in p for p in both)


@pytest.mark.integration
def test_gateway_check_warns_of_the_deprecated_key(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("slack:\n  outbound_channel: slack.out\n")
    result = subprocess.run([sys.executable, "-m", "gateways", "check", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "slack.outbound_channel is deprecated; call it slack.send_channel" in result.stderr


def test_cross_field_problems_name_the_key():
    found = problems("slack:\n  app_token: xoxb-wrong\n  listen: 127.0.0.1:3000\n"
                     "  send_channel: slack.receive\n  api_url: ftp://x\n")
    text = "\n".join(found)
    assert "slack.app_token: an app-level token starts with xapp-" in text
    assert "slack.signing_secret: the Events API listener needs the signing secret" in text
    assert "slack.send_channel: must differ from every inbound channel" in text
    assert "slack.api_url" in text
    assert "routes[0].text" in "\n".join(problems("slack:\n  routes:\n    - channel: x\n      text: '('\n"))


def test_demo_without_tokens_is_skipped_with_one_line():
    config = load_config(REPO / "config" / "demo.yaml", environ={})
    with pytest.raises(StackUnavailable) as info:
        SlackGateway.stack_services(config.sections["slack"], config)
    assert "\n" not in str(info.value) and "SLACK_APP_TOKEN" in str(info.value)
    config = load_config(REPO / "config" / "demo.yaml",
                         environ={"SLACK_APP_TOKEN": "xapp-1", "SLACK_BOT_TOKEN": "xoxb-1"})
    assert SlackGateway.stack_services(config.sections["slack"], config) == []
    assert SlackGateway.consumer_channels(config.sections["slack"]) == ["slack.receive"]


def test_consumer_channels_follow_the_routes():
    s = section("slack:\n  routes:\n    - channel: a\n    - channel: b\n    - channel: a\n"
                "  default_channel: null\n")
    assert SlackGateway.consumer_channels(s) == ["a", "b"]


def test_every_key_is_documented():
    doc = (REPO / "docs" / "slack.md").read_text()
    documented = set(re.findall(r"^\| `(slack\.[^`]+)` \|", doc, flags=re.M))
    expected = {path for path, *_ in reference(SlackSection, "slack")}
    assert expected - documented == set()
    assert documented - expected == set()
    for key in ("slack.app_token", "slack.bot_token", "slack.api_url"):
        assert key in expected


def test_the_conversation_is_one_slack_channel():
    key = SlackGateway.conversation_key
    assert key({"type": "slack.message", "team": "T1", "channel": "C1"}) == ("T1", "C1")
    assert key({"type": "slack.message", "team": "T1", "channel": "C1"}) != key(
        {"type": "slack.message", "team": "T1", "channel": "C2"})
    assert key({"type": "slack.event", "team": "T1", "channel": None}) is None
