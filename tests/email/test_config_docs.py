"""The email section's validation, its documented reference, and the example files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gateways.core.config import ConfigError, load_config, parse_config, reference
from gateways.email.config import EmailSection
from gateways.email.daemon import EmailGateway
from servers import require_binary

REPO = Path(__file__).resolve().parents[2]


def parse(section: str) -> None:
    parse_config("layer: {url: 'redis://127.0.0.1:6379/0'}\nemail:\n" + section,
                 section_classes={"email": EmailSection}, environ={"PW": "secret"})


def problems(section: str) -> str:
    with pytest.raises(ConfigError) as error:
        parse(section)
    return str(error.value)


def test_required_keys():
    text = problems("  hostname: x\n")
    for key in ("email.listen", "email.domains", "email.relay"):
        assert f"{key}: required key is missing" in text


def test_bad_values_are_named():
    base = "  listen: 127.0.0.1:2525\n  domains: [demo.local]\n  relay: smtp://relay.test:25\n"
    assert "not HOST:PORT" in problems(base.replace("127.0.0.1:2525", "nowhere"))
    assert "not a URL with scheme" in problems(base.replace("smtp://relay.test:25", "http://relay.test"))
    assert "not a lower-case domain" in problems(base.replace("[demo.local]", "['Demo Local']"))
    assert "not a valid regular expression" in problems(base + "  routes: [{address: '(', channel: x}]\n")
    assert "routes[0].channel: required" in problems(base + "  routes: [{address: 'a'}]\n")
    assert "tls_cert and tls_key go together" in problems(base + "  tls_cert: c.pem\n")
    assert "needs tls_cert" in problems(base + "  require_starttls: true\n")
    assert "only after STARTTLS" in problems(base + "  auth_users: {u: '${PW}'}\n")
    assert "must differ" in problems(base + "  send_channel: email.receive\n")
    assert "names no host" in problems(base.replace("smtp://relay.test:25", "smtp:///x"))
    parse(base.replace("smtp://relay.test:25", "console://"))
    parse(base.replace("smtp://relay.test:25", "file://../var/mail"))
    parse(base + "  relay_attempts: 3\n  senders: ['@demo.local', ops@example.test]\n")


def test_every_key_is_documented_in_docs_email_md():
    documented = set(re.findall(r"^\| `(email\.[^`]+)` \|", (REPO / "docs" / "email.md").read_text(), re.M))
    keys = {row[0] for row in reference(EmailSection, "email")}
    assert keys == documented, f"undocumented: {sorted(keys - documented)}; stale: {sorted(documented - keys)}"


@pytest.mark.integration
@pytest.mark.parametrize("name", ["demo.yaml", "email.example.yaml"])
def test_example_files_are_valid(name, tmp_path):
    # The example names its certificate where a server keeps it, and the check wants
    # a usable one there: a throwaway certificate stands in for it.
    text = (REPO / "config" / name).read_text()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([require_binary("openssl", "openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                    "2", "-subj", "/CN=mx.example.com", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    text = re.sub(r"^(  tls_cert:) .*$", rf"\1 {cert}", text, flags=re.M)
    text = re.sub(r"^(  tls_key:) .*$", rf"\1 {key}", text, flags=re.M)
    copy = tmp_path / name
    copy.write_text(text)
    config = load_config(copy, environ={"SMTP_RELAY_PASSWORD": "x", "SMTP_AUTH_PASSWORD": "y"})
    section = config.sections["email"]
    assert EmailGateway.consumer_channels(section)[-1] == section.default_channel


def test_demo_serves_echo_on_2525_with_a_development_relay():
    section = load_config(REPO / "config" / "demo.yaml").sections["email"]
    assert (section.listen, section.domains) == ("127.0.0.1:2525", ["demo.local"])
    assert section.relay.startswith("file://")


def test_spec_documents_every_message_type():
    from gateways.core.specs import load_schema

    spec = (REPO / "protocol_specs" / "email.md").read_text()
    for mtype in load_schema("email").message_types:
        assert f"## `{mtype}`" in spec


def test_each_message_is_its_own_conversation():
    from gateways.email.protocol import Delivery, Envelope, receive_message

    message = receive_message(b"Subject: x\r\n\r\nx\r\n", Envelope("a@x.test", ["b@demo.local"]), id="1.0",
                              reply_channel="specific.a!b", delivery=Delivery("email.receive", ["b@demo.local"]))
    assert EmailGateway.conversation_key(message) is None  # not the reply_channel all mail shares


def test_an_inbound_channel_equal_to_send_channel_is_reported_on_its_own_line():
    text = ("layer: {url: 'redis://127.0.0.1:6379/0'}\n"     # 1
            "email:\n"                                        # 2
            "  listen: 127.0.0.1:2525\n"                      # 3
            "  domains: [example.com]\n"                      # 4
            "  relay: console://\n"                           # 5
            "  routes:\n"                                     # 6
            "    - address: 'help@example\\.com'\n"           # 7
            "      channel: email.help\n"                     # 8
            "    - address: 'out@example\\.com'\n"            # 9
            "      channel: email.send\n"                     # 10
            "  default_channel: email.send\n")                # 11
    with pytest.raises(ConfigError) as error:
        parse_config(text, "g.yaml", section_classes={"email": EmailSection}, environ={})
    lines = str(error.value).splitlines()
    assert any(line.startswith("g.yaml:10: email.routes[1].channel: is email.send_channel")
               for line in lines), lines
    assert any(line.startswith("g.yaml:11: email.default_channel: is email.send_channel")
               for line in lines), lines
    assert not any(line.startswith("g.yaml:2:") for line in lines), lines
