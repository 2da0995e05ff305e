"""MQTT 5 properties conversion, the config section, and its documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateways.core.config import ConfigError, parse_config, reference
from gateways.mqtt.config import MqttSection
from gateways.mqtt.properties import from_paho, to_paho

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"


def test_properties_round_trip():
    values = {"content_type": "application/json", "response_topic": "r/1", "correlation_data": b"\x00\x01",
              "user_properties": [["a", "1"], ["a", "2"]], "message_expiry": 60, "payload_format": 1}
    assert from_paho(to_paho(values)) == values


def test_received_only_properties_and_none():
    props = Properties(PacketTypes.PUBLISH)
    props.SubscriptionIdentifier = 7
    assert from_paho(props) == {"subscription_identifiers": [7]}
    assert from_paho(None) == {}
    assert to_paho({}) is None


@pytest.mark.parametrize("values, problem", [
    ({"subscription_identifiers": [1]}, "not a property a publish can carry"),
    ({"payload_format": 7}, "payload_format"),
])
def test_bad_properties_are_named(values, problem):
    with pytest.raises(ValueError, match=problem):
        to_paho(values)


def parse(text: str) -> MqttSection:
    return parse_config(text, "t.yaml", {"mqtt": MqttSection}, environ={"PW": "secret"}).sections["mqtt"]


def test_section_defaults_and_derived_values():
    section = parse("mqtt:\n  broker: mqtts://broker.example\n  client_id: gw-1\n  username: u\n"
                    "  password: ${PW}\n  subscriptions:\n    - filter: a/+\n      qos: 2\n")
    assert (section.host, section.port, section.tls, section.mqtt5) == ("broker.example", 8883, True, True)
    assert section.identifier == "gw-1" and section.password == "secret"
    assert section.configured_subscriptions()[0].granted_qos == 1
    assert section.session_expiry > 0


def test_client_id_defaults_to_a_stable_name():
    section = parse("mqtt:\n  broker: mqtt://h:1884\n  version: 3.1.1\n")
    assert section.identifier == parse("mqtt:\n  broker: mqtt://h:1884\n").identifier
    assert section.identifier.startswith("channels-gateway-")


@pytest.mark.parametrize("text, problem", [
    ("mqtt:\n  client_id: x\n", "mqtt.broker: required key is missing"),
    ("mqtt:\n  broker: http://x\n", "mqtt.broker"),
    ("mqtt:\n  broker: mqtt://x\n  subscriptions:\n    - filter: a/#/b\n", "'#' must be"),
    ("mqtt:\n  broker: mqtt://x\n  subscriptions:\n    - {filter: a}\n    - {filter: a}\n", "listed twice"),
    ("mqtt:\n  broker: mqtt://x\n  ca_file: /ca.pem\n", "mqtts://"),
    ("mqtt:\n  broker: mqtt://x\n  version: 4\n", "not an MQTT version"),
    ("mqtt:\n  broker: mqtt://x\n  version: 3.1.1\n  subscriptions:\n    - {filter: $share/g/a}\n", "need MQTT version 5"),
    ("mqtt:\n  broker: mqtt://x\n  send_channel: mqtt.publish\n", "must differ"),
    ("mqtt:\n  broker: mqtt://x\n  subscriptions:\n    - {filter: a, qos: 3}\n", "qos"),
    ("mqtt:\n  broker: mqtt://x\n  client_id: has space\n", "client id"),
])
def test_section_problems_are_reported(text, problem):
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert problem in str(info.value)


def test_every_key_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([^`]+)` \|", text, re.M))
    wanted = {row[0] for row in reference(MqttSection, "mqtt")}
    assert wanted - documented == set()
    assert documented - wanted == set()
