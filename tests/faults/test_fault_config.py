"""Files a configuration names (TLS certificates, keys, CAs, the AUTH file)
are checked by `gateway check` and at start: a missing, unreadable or
unusable one is `file:line: key: problem` naming the path, and exit 2."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
import yaml

import email_stack
import mqtt_stack
from servers import PYTHON, REPO, require_binary

# Each test runs the `gateway` command, or starts a daemon in this process.
pytestmark = pytest.mark.integration


def gateway(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    """Run the `gateway` command to its end (a daemon that starts is a failure: the timeout)."""
    return subprocess.run([PYTHON, "-m", "gateways", *argv], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    openssl = require_binary("openssl", "openssl")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gw.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def line_of(config, key: str) -> int:
    """The 1-based line of ``key:`` in the YAML file."""
    for number, line in enumerate(config.read_text().splitlines(), 1):
        if line.strip().startswith(f"{key}:"):
            return number
    raise AssertionError(f"{key} not in {config}")


def assert_refused(config, protocol: str, key: str, problem: str) -> None:
    """`gateway check` and `gateway <protocol>` both exit 2 with the same line."""
    expected = f"{config}:{line_of(config, key)}: {protocol}.{key}: {problem}"
    for argv in (["check"], [protocol]):
        done = gateway(*argv, "--config", str(config))
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert expected in done.stderr.splitlines(), (expected, done.stderr)
        assert "Traceback" not in done.stderr


def test_email_tls_cert_missing(tmp_path, certificate):
    _, key = certificate
    missing = tmp_path / "nowhere" / "cert.pem"
    config, _ = email_stack.write_config(tmp_path, "redis://127.0.0.1:1/0", tls_cert=str(missing),
                                         tls_key=str(key))
    assert_refused(config, "email", "tls_cert", f"file {str(missing)!r} does not exist")


def test_email_tls_key_is_a_directory(tmp_path, certificate):
    cert, _ = certificate
    config, _ = email_stack.write_config(tmp_path, "redis://127.0.0.1:1/0", tls_cert=str(cert),
                                         tls_key=str(tmp_path))
    assert_refused(config, "email", "tls_key", f"{str(tmp_path)!r} is a directory, not a file")


def test_email_tls_key_that_is_not_the_key(tmp_path, certificate):
    cert, _ = certificate
    garbage = tmp_path / "key.pem"
    garbage.write_text("not a key\n")
    config, _ = email_stack.write_config(tmp_path, "redis://127.0.0.1:1/0", tls_cert=str(cert),
                                         tls_key=str(garbage))
    done = gateway("check", "--config", str(config))
    assert done.returncode == 2
    assert f"email.tls_cert: cannot load the certificate {str(cert)!r} with the key {str(garbage)!r}" in done.stderr


def test_email_auth_file_missing(tmp_path, certificate):
    cert, key = certificate
    config, _ = email_stack.write_config(tmp_path, "redis://127.0.0.1:1/0", tls_cert=str(cert), tls_key=str(key),
                                         auth_file="users.txt")
    assert_refused(config, "email", "auth_file", f"file {str(tmp_path / 'users.txt')!r} does not exist")


@pytest.mark.parametrize("key", ["ca_file", "cert_file"])
def test_mqtt_tls_file_missing_is_refused_not_retried(tmp_path, key):
    missing = tmp_path / f"{key}.pem"
    config = mqtt_stack.write_config(tmp_path, "redis://127.0.0.1:1/0", "mqtts://127.0.0.1:8883", [],
                                     **{key: str(missing)})
    assert_refused(config, "mqtt", key, f"file {str(missing)!r} does not exist")


def test_mqtt_ca_file_that_holds_no_certificate(tmp_path):
    garbage = tmp_path / "ca.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    config = mqtt_stack.write_config(tmp_path, "redis://127.0.0.1:1/0", "mqtts://127.0.0.1:8883", [],
                                     ca_file=str(garbage))
    done = gateway("check", "--config", str(config))
    assert done.returncode == 2
    assert f"mqtt.ca_file: {str(garbage)!r} holds no usable CA certificate" in done.stderr


def test_relative_files_are_found_next_to_the_config_wherever_it_runs(tmp_path, certificate):
    cert, key = certificate
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_bytes(cert.read_bytes())
    (tmp_path / "tls" / "key.pem").write_bytes(key.read_bytes())
    config, _ = email_stack.write_config(tmp_path, "redis://127.0.0.1:1/0", tls_cert="tls/cert.pem",
                                         tls_key="tls/key.pem")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = gateway("check", "--config", str(config), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(config.read_text())["email"]["tls_cert"] == "tls/cert.pem"


def test_memory_layer_is_valid_for_one_process_and_refused_by_the_commands(tmp_path):
    config = tmp_path / "memory.yaml"
    config.write_text("layer: {url: 'memory://'}\n"
                      "email: {listen: '127.0.0.1:0', domains: [demo.local], relay: 'console://'}\n"
                      "django: {settings: demo.settings, path: ['%s']}\n" % (REPO / "example"))
    done = gateway("check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "memory:// keeps channels inside one Python process" in done.stderr
    for argv in (["email"], ["worker"], ["up"]):
        done = gateway(*argv, "--config", str(config))
        assert done.returncode == 2, (argv, done.stderr)
        assert f"{config}: layer.url: memory:// keeps channels inside one Python process" in done.stderr
    config.write_text(config.read_text().replace("memory://", "redis://127.0.0.1:1/0"))
    done = gateway("email", "--config", str(config), "--layer", "memory://")
    assert done.returncode == 2 and done.stderr.startswith("--layer: memory:// keeps channels"), done.stderr


async def test_memory_layer_serves_a_daemon_and_its_consumer_in_one_process(tmp_path):
    from gateways.core.config import load_config
    from gateways.core.daemon import Daemon
    from gateways.core.layer import build_layer
    from gateways.email.daemon import EmailGateway

    config_path = tmp_path / "memory.yaml"
    config_path.write_text("layer: {url: 'memory://'}\n"
                           "email: {listen: '127.0.0.1:0', domains: [demo.local], relay: 'console://', "
                           "grace_period: 1}\n")
    config = load_config(config_path)
    layer = build_layer(config.layer)
    daemon = Daemon(EmailGateway, config, layer=layer)
    await daemon.start()
    try:
        await layer.send("email.send", {"type": "email.send", "id": "m", "reply_channel": "test.outcome",
                                        "from": "a@demo.local", "to": "you@example.test", "text": "hi"})
        outcome = await asyncio.wait_for(layer.receive("test.outcome"), 10)
    finally:
        await daemon.shutdown()
    assert outcome["type"] == "email.sent", outcome
