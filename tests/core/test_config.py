"""Configuration: typed sections, file:line problems, ${VAR} interpolation."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from gateways.core.config import (
    ConfigError,
    GatewaySection,
    channel_name,
    check_host_port,
    config_file,
    host_port,
    load_config,
    parse_config,
    reference,
    regex,
    setting,
)


@dataclass
class Route:
    path: str = regex("", "p", required=True)
    channel: str = channel_name("x", "c")


@dataclass
class Section(GatewaySection):
    listen: str = host_port("127.0.0.1:1", "l")
    routes: list[Route] = setting([], "r")
    token: str | None = setting(None, "t")
    labels: dict[str, str] = setting({"env": "dev"}, "d")
    # A plain field with the same metadata is read the same way.
    backup: str | None = field(default=None, metadata={"doc": "b", "check": check_host_port})
    cert: str | None = config_file("c")


SECTIONS = {"proto": Section}


def problems(text: str, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", SECTIONS, environ or {})
    return [str(p) for p in info.value.problems]


def test_valid_file_becomes_typed_objects():
    config = parse_config(
        "layer:\n  url: redis://h:6379/1\n  capacity: 5\nproto:\n  listen: ${HOST}:80\n"
        "  grace_period: 3\n  routes:\n    - path: ^/a/$\n      channel: c.a\n",
        "f.yaml", SECTIONS, {"HOST": "0.0.0.0"},
    )
    section = config.sections["proto"]
    assert section.listen == "0.0.0.0:80"
    assert section.grace_period == 3.0 and isinstance(section.grace_period, float)
    assert section.routes == [Route("^/a/$", "c.a")]
    assert config.layer.capacity == 5 and config.layer.url == "redis://h:6379/1"


def test_every_problem_is_reported_with_file_line_and_key_path():
    found = problems(
        "layer:\n"
        "  capacity: ten\n"          # 2
        "proto:\n"
        "  listen: nowhere\n"        # 4
        "  routes:\n"
        "    - path: '(['\n"         # 6
        "      chanel: x\n"          # 7
        "  grace_period: -1\n"       # 8
        "bogus: 1\n"                 # 9
    )
    assert "f.yaml:2: layer.capacity: expected integer, got 'ten'" in found
    assert "f.yaml:4: proto.listen: 'nowhere' is not HOST:PORT" in found
    assert any(p.startswith("f.yaml:6: proto.routes[0].path: '([' is not a valid regular expression") for p in found)
    assert any(p.startswith("f.yaml:7: proto.routes[0].chanel: unknown key") for p in found)
    assert "f.yaml:8: proto.grace_period: -1.0 must be greater than 0" in found
    assert any(p.startswith("f.yaml:9: bogus: unknown section") for p in found)


def test_declarations_fill_the_metadata_and_copy_mutable_defaults(tmp_path):
    one, two = Section(), Section()
    one.routes.append(Route("^/$"))
    one.labels["env"] = "prod"
    assert two.routes == [] and two.labels == {"env": "dev"}
    rows = {path: (type_name, default, doc) for path, type_name, default, doc in reference(Section, "proto")}
    assert rows["proto.labels"] == ("mapping of string", {"env": "dev"}, "d")
    assert rows["proto.cert"] == ("string or null", None, "c; relative to the config file")
    (tmp_path / "c.pem").write_text("x")
    config = parse_config("proto:\n  cert: c.pem\n  backup: 127.0.0.1:2\n", str(tmp_path / "f.yaml"), SECTIONS, {})
    assert config.sections["proto"].cert == str(tmp_path / "c.pem")
    found = problems("proto:\n  cert: missing.pem\n  backup: nowhere\n")
    assert any(p.startswith("f.yaml:2: proto.cert: file ") and "does not exist" in p for p in found)
    assert "f.yaml:3: proto.backup: 'nowhere' is not HOST:PORT" in found


def test_missing_required_key():
    assert "f.yaml:3: proto.routes[0].path: required key is missing" in problems(
        "proto:\n  routes:\n    - channel: a\n")


def test_unset_environment_variable_is_named_and_default_applies():
    assert "f.yaml:2: proto.token: environment variable SECRET is not set" in problems(
        "proto:\n  token: ${SECRET}\n")
    config = parse_config("proto:\n  token: ${SECRET:-fallback}\n", "f.yaml", SECTIONS, {})
    assert config.sections["proto"].token == "fallback"
    config = parse_config("proto:\n  token: ${SECRET:-fallback}\n", "f.yaml", SECTIONS, {"SECRET": "s3"})
    assert config.sections["proto"].token == "s3"


def test_broken_yaml_names_the_line():
    found = problems("proto:\n  listen: [unclosed\n  other: 1\n")
    assert found[0].startswith("f.yaml:") and "invalid YAML" in found[0]


def test_duplicate_keys_are_refused():
    assert "f.yaml:3: proto.listen: duplicate key" in problems(
        "proto:\n  listen: a:1\n  listen: b:2\n")


def test_several_redis_hosts_are_refused_with_the_reason():
    found = problems("layer:\n  url: redis://a:1,b:2/0\n")
    assert len(found) == 1 and "several Redis hosts are not supported" in found[0]


def test_bad_layer_scheme():
    assert any("is not a URL with scheme" in p for p in problems("layer:\n  url: http://x/\n"))


@pytest.mark.integration
def test_gateway_check_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("websocket:\n  listen: 127.0.0.1:x\n  routes: []\n")
    result = subprocess.run([sys.executable, "-m", "gateways", "check", "--config", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{bad}:2: websocket.listen: '127.0.0.1:x' is not HOST:PORT" in result.stderr
    assert f"{bad}:3: websocket.routes: at least one route is needed" in result.stderr


@pytest.mark.integration
def test_demo_config_is_valid():
    result = subprocess.run([sys.executable, "-m", "gateways", "check", "--config", "config/demo.yaml"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_load_config_reports_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read" in str(info.value)
