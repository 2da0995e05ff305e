"""Where a protocol's spec and schema are found: the package of the module
its ``gateways.specs`` entry point names, the built-ins' included."""

from __future__ import annotations

import json
import sys
from importlib.metadata import EntryPoint

import pytest

import protocol_specs
from gateways.core import specs
from gateways.core.specs import SPECS_DIR, load_schema, spec_dir, spec_document


@pytest.fixture
def chat_plugin(tmp_path, monkeypatch):
    """A plug-in package ``chat_plugin`` registering the ``chat`` protocol's spec."""
    package = tmp_path / "chat_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "spec.py").write_text(
        "def consumer_channels(section):\n    return ['chat.receive']\n\n"
        "def conversation_key(message):\n    return message.get('room')\n")
    (package / "chat.md").write_text("# Chat\n\n## `chat.say`\n")
    (package / "chat.schema.json").write_text(json.dumps({"protocol": "chat", "version": "1.0", "messages": {
        "chat.say": {"type": "object", "required": ["type", "text"],
                     "properties": {"type": {"const": "chat.say"}, "text": {"type": "string"}}}}}))
    monkeypatch.syspath_prepend(str(tmp_path))
    registered = [EntryPoint(name="chat", value="chat_plugin.spec", group=protocol_specs.SPECS_GROUP)]
    monkeypatch.setattr(protocol_specs, "entry_points",
                        lambda group: registered if group == protocol_specs.SPECS_GROUP else [])
    load_schema.cache_clear()
    yield
    load_schema.cache_clear()
    for name in ("chat_plugin", "chat_plugin.spec"):
        sys.modules.pop(name, None)


def test_the_built_in_protocols_register_their_spec_modules():
    for protocol in ("email", "mqtt", "slack", "websocket"):
        assert protocol_specs.spec_module(protocol).__name__ == f"protocol_specs.{protocol}"
        assert str(spec_dir(protocol)) == str(SPECS_DIR)


def test_a_plugin_spec_and_routing_come_from_its_own_package(chat_plugin, tmp_path):
    assert str(spec_dir("chat")) == str(tmp_path / "chat_plugin")
    assert "`chat.say`" in spec_document("chat")
    schema = load_schema("chat")
    assert schema.problem({"type": "chat.say", "text": "hi"}) is None
    assert schema.problem({"type": "chat.say", "text": 1}) is not None
    routing = protocol_specs.routing("chat")
    assert routing.consumer_channels(None) == ["chat.receive"]
    assert routing.conversation_key({"room": "r1"}) == "r1"


def test_a_specs_dir_without_the_schema_falls_back_to_the_spec_module(chat_plugin):
    # A gateway class that keeps the default directory (protocol_specs) still validates.
    assert load_schema("chat", SPECS_DIR).message_types == ["chat.say"]


def test_an_unknown_protocol_has_no_spec_module():
    assert protocol_specs.spec_module("no_such_protocol") is None
    assert protocol_specs.routing("no such") is None
    with pytest.raises(FileNotFoundError):
        specs.load_schema("no_such_protocol")
