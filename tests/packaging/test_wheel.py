"""The package as a user gets it: a wheel built from this checkout, installed
into a fresh virtual env outside the source tree, run with nothing on
``PYTHONPATH`` and the working directory elsewhere.

One env gets the wheel with every extra and must check a configuration with
all four gateways and run the email gateway (which validates what it emits
against the shipped schema) from SMTP to the channel layer; another gets the
wheel alone and must name the extra a gateway is missing.

pip's cache is used, so after the first run the installs take seconds. Nothing
here skips: a missing piece fails (redis-server follows tests/servers.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from servers import REPO, Daemon, free_port, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PROTOCOLS = ("email", "mqtt", "slack", "websocket")
#: The extra each gateway needs (the WebSocket gateway is in the base install).
EXTRAS = {"email": "aiosmtplib", "mqtt": "aiomqtt", "slack": "slack_sdk"}
#: What a build copies of the checkout: everything but local state.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "var", "*.egg-info",
                                    "__pycache__", ".pytest_cache", "*.sqlite3")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of an installed command: no path or settings pointing
    into the checkout or at another project."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE",
               "GATEWAY_CONFIG", "GATEWAY_LAYER_URL")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    # Empty counts as unset; set, it also wins over what servers.Daemon inherits.
    return {**env, "PYTHONPATH": "", "PYTHONUNBUFFERED": "1", **extra}


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``argv``; the result carries stdout and stderr as text."""
    return subprocess.run(argv, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``result``, or a failure showing what the command printed."""
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory outside the source tree for the builds, envs and configs."""
    path = tmp_path_factory.mktemp("packaging")
    assert not path.resolve().is_relative_to(REPO.resolve())
    return path


@pytest.fixture(scope="module")
def build(workdir) -> tuple[Path, str]:
    """The wheel built from a copy of the checkout (so no build/ lands in it),
    and the build's output."""
    source = workdir / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    # Byte-compiling off (some CI images set it) only adds build warnings that are not ours.
    env = clean_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    result = check(run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-v",
                        "-w", str(workdir / "dist")], cwd=workdir, env=env))
    (wheel,) = (workdir / "dist").glob("channels_gateways-*.whl")
    return wheel, result.stdout + result.stderr


def make_env(path: Path, requirement: str, cwd: Path) -> Path:
    """A fresh virtual env at ``path`` with ``requirement`` installed; its bin/."""
    venv.EnvBuilder(with_pip=True).create(path)
    check(run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", requirement], cwd=cwd))
    return path / "bin"


@pytest.fixture(scope="module")
def full_env(build, workdir) -> Path:
    """bin/ of an env with the wheel and every extra."""
    wheel, _ = build
    return make_env(workdir / "env-all", f"channels-gateways[all] @ {wheel.as_uri()}", workdir)


@pytest.fixture(scope="module")
def base_env(build, workdir) -> Path:
    """bin/ of an env with the wheel and no extra."""
    wheel, _ = build
    return make_env(workdir / "env-base", str(wheel), workdir)


def write_config(directory: Path, layer_url: str, smtp_port: int) -> Path:
    """A configuration with all four gateway sections; Slack's tokens come from the environment."""
    path = directory / "allfour.yaml"
    path.write_text(textwrap.dedent(f"""\
        layer:
          url: {layer_url}
        websocket:
          listen: 127.0.0.1:{free_port()}
          routes:
            - path: ^/echo/$
              channel: websocket.echo
        email:
          listen: 127.0.0.1:{smtp_port}
          domains: [example.test]
          relay: file://./outbox
          spool: ./spool
        mqtt:
          broker: mqtt://127.0.0.1:{free_port()}
          subscriptions:
            - filter: echo/#
              channel: mqtt.echo
        slack:
          app_token: ${{SLACK_APP_TOKEN}}
          bot_token: ${{SLACK_BOT_TOKEN}}
          default_channel: slack.receive
        """))
    return path


SLACK_ENV = {"SLACK_APP_TOKEN": "xapp-1-packaging-test", "SLACK_BOT_TOKEN": "xoxb-packaging-test"}

#: Run by the env's python: one message off the layer the config names, checked
#: against the installed schema, printed as JSON.
RECEIVE = """
import asyncio, json, sys
from gateways.core.config import load_config
from gateways.core.layer import build_layer, close_layer
from gateways.core.specs import load_schema

async def main():
    layer = build_layer(load_config(sys.argv[1]).layer)
    try:
        message = await asyncio.wait_for(layer.receive(sys.argv[2]), 30)
    finally:
        await close_layer(layer)
    load_schema(sys.argv[2].partition(".")[0]).validate(message)
    print(json.dumps({k: message[k] for k in ("type", "recipients", "subject", "text")}))

asyncio.run(main())
"""


def test_wheel_ships_specs_schemas_and_type_markers(build):
    wheel, output = build
    names = set(zipfile.ZipFile(wheel).namelist())
    specs = {f"protocol_specs/{p.name}" for p in (REPO / "protocol_specs").iterdir()
             if p.name.endswith((".md", ".schema.json"))}
    assert {f"protocol_specs/{p}{suffix}" for p in PROTOCOLS for suffix in (".md", ".schema.json")} <= specs
    assert specs <= names
    assert {"gateways/py.typed", "consumers/py.typed", "protocol_specs/py.typed",
            "protocol_specs/__init__.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "example/"))]
    # Python warnings (SetuptoolsDeprecationWarning: ...) and distutils' "warning: ...".
    warnings = [line for line in output.splitlines()
                if re.search(r"Warning:", line) or line.strip().lower().startswith("warning:")]
    assert not warnings, "\n".join(warnings)


def test_installed_wheel_checks_all_four_and_runs_the_email_gateway(full_env, workdir, private_redis):
    home = workdir / "run-all"
    home.mkdir()
    smtp_port = free_port()
    config = write_config(home, private_redis.url, smtp_port)
    env = clean_env(**SLACK_ENV)

    where = check(run([str(full_env / "python"), "-c",
                       "import gateways, consumers, protocol_specs; "
                       "print(gateways.__file__, consumers.__file__, protocol_specs.__file__)"], cwd=home))
    assert str(REPO) not in where.stdout and "site-packages" in where.stdout

    result = check(run([str(full_env / "gateway"), "check", "--config", config.name], cwd=home, env=env))
    assert "OK (email, mqtt, slack, websocket)" in result.stdout

    gateway = Daemon("wheel-email", [str(full_env / "gateway"), "email", "--config", config.name],
                     env=env, cwd=home)
    try:
        gateway.wait_for_log("email gateway started")
        wait_for_port(smtp_port)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            client.sendmail("you@example.test", ["bob@example.test"],
                            "From: you@example.test\r\nTo: bob@example.test\r\n"
                            "Subject: from the wheel\r\n\r\nhello\r\n")
        received = run([str(full_env / "python"), "-c", RECEIVE, config.name, "email.receive"], cwd=home, env=env)
        assert received.returncode == 0, f"{received.stderr}\ngateway log:\n{gateway.log()}"
        message = json.loads(received.stdout)
        assert message["type"] == "email.receive"
        assert message["recipients"] == ["bob@example.test"]
        assert message["subject"] == "from the wheel"
        assert message["text"].strip() == "hello"
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log()


def test_wheel_without_extras_names_the_missing_extra(base_env, workdir):
    home = workdir / "run-base"
    home.mkdir()
    config = write_config(home, "redis://127.0.0.1:1/0", free_port())
    env = clean_env(**SLACK_ENV)

    for protocol, module in EXTRAS.items():
        result = run([str(base_env / "gateway"), protocol, "--config", config.name], cwd=home, env=env)
        assert result.returncode == 2, result
        assert (f"the {protocol} gateway needs its extra: pip install 'channels-gateways[{protocol}]' "
                f"(missing module {module})") in result.stderr

    for command in ("check", "up"):
        result = run([str(base_env / "gateway"), command, "--config", config.name], cwd=home, env=env)
        assert result.returncode == 2, result
        for protocol in EXTRAS:
            assert f"{config.name}: {protocol}: the {protocol} gateway needs its extra: " \
                   f"pip install 'channels-gateways[{protocol}]'" in result.stderr
        assert "websocket" not in result.stderr

    # The WebSocket gateway is in the base install (its layer is down: it starts and waits).
    gateway = Daemon("wheel-websocket", [str(base_env / "gateway"), "websocket", "--config", config.name],
                     env=env, cwd=home)
    try:
        gateway.wait_for_log("websocket gateway started")
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log()

    # The consumers need no gateway's extra.
    check(run([str(base_env / "python"), "-c",
               "import consumers.email, consumers.mqtt, consumers.slack, consumers.websocket, "
               "consumers.testing"], cwd=home, env=env))
