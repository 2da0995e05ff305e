"""The schema validator and its bytes keyword; every spec's schema compiles."""

import pytest

from gateways.core import registry
from gateways.core.specs import SPECS_DIR, InvalidMessage, load_schema, schema_protocols


def test_bytes_keyword_accepts_bytes_only():
    schema = load_schema("websocket")
    assert schema.problem({"type": "websocket.send", "bytes": b"\x00"}) is None
    assert schema.problem({"type": "websocket.send", "text": "x"}) is None
    assert schema.problem({"type": "websocket.send", "bytes": "not bytes"}) is not None
    assert schema.problem({"type": "websocket.send", "text": b"bytes are not text"}) is not None


def test_problems_name_the_type_and_key():
    schema = load_schema("websocket")
    assert schema.problem({"type": "websocket.group_add"}).startswith("websocket.group_add:")
    assert "unknown message type" in schema.problem({"type": "websocket.nope"})
    assert schema.problem("not a dict") == "message is str, not a dict"
    with pytest.raises(InvalidMessage):
        schema.validate({"type": "websocket.close", "code": "x"})


def test_every_installed_protocol_has_its_schema():
    assert registry.protocol_names() == ("email", "mqtt", "slack", "websocket")
    assert set(registry.protocol_names()) <= set(schema_protocols())


@pytest.mark.parametrize("protocol", schema_protocols())
def test_every_schema_compiles_and_has_its_document(protocol):
    schema = load_schema(protocol)
    assert schema.message_types and schema.version
    assert all(t.startswith(f"{protocol}.") for t in schema.message_types)
    assert (SPECS_DIR / f"{protocol}.md").is_file()
    document = (SPECS_DIR / f"{protocol}.md").read_text()
    for mtype in schema.message_types:
        assert f"`{mtype}`" in document, f"{mtype} is not documented in {protocol}.md"
