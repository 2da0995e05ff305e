"""How the registry finds protocols, and what it says when a gateway's extra is missing."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest

from gateways.core import registry


def test_each_registered_section_is_the_one_its_gateway_names():
    sections = registry.section_classes()
    assert tuple(sections) == registry.protocol_names() == ("email", "mqtt", "slack", "websocket")
    for name, section in sections.items():
        assert registry.gateway_class(name).section_class is section


def test_a_missing_library_becomes_missing_extra_naming_the_module(tmp_path, monkeypatch):
    (tmp_path / "fake_gateway_daemon.py").write_text("import no_such_library_for_this_test\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="fake", value="fake_gateway_daemon:Gateway", group=registry.GROUP)
    with pytest.raises(registry.MissingExtra) as caught:
        registry._load(ep, "fake")
    assert caught.value.module == "no_such_library_for_this_test"
    # A hand-made entry point belongs to no distribution, so there is no extra to name.
    assert str(caught.value) == "the fake gateway needs the module no_such_library_for_this_test, " \
                                "which is not installed"
    sys.modules.pop("fake_gateway_daemon", None)


def test_the_installed_distribution_names_its_extra():
    (ep,) = [ep for ep in registry.entry_points(group=registry.GROUP) if ep.name == "mqtt"]
    exc = registry.MissingExtra("mqtt", "aiomqtt", registry._requirement(ep, "mqtt"))
    assert str(exc) == ("the mqtt gateway needs its extra: pip install 'channels-gateways[mqtt]' "
                        "(missing module aiomqtt)")


def test_a_missing_module_of_the_package_itself_is_not_an_extra():
    ep = EntryPoint(name="nope", value="gateways.no_such_protocol.daemon:Gateway", group=registry.GROUP)
    with pytest.raises(ModuleNotFoundError) as caught:
        registry._load(ep, "nope")
    assert not isinstance(caught.value, registry.MissingExtra)
