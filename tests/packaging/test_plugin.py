"""A fifth protocol as a user adds one: the example line gateway, pip-installed
from its own directory, is found by `gateway check` and `gateway line`, and
passes the conformance kit.

It is installed into a directory of its own put on ``PYTHONPATH`` of the
commands started here (its entry points come with it), so the rest of the
suite keeps seeing the four built-in protocols only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateways.core.config import LayerConfig
from gateways.core.layer import build_layer, close_layer
from gateways.core.specs import load_schema
from servers import REPO, Daemon, free_port, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EXAMPLE = REPO / "examples" / "line_gateway"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A directory holding the installed line gateway (a wheel build, not the source)."""
    target = tmp_path_factory.mktemp("line-plugin")
    # pip builds in the source tree: build from a copy, so that no build/ of an
    # earlier run (nor one left in the checkout) goes into the package.
    source = tmp_path_factory.mktemp("line-source") / "line_gateway"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                             str(target), str(source)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def plugin_env(plugin_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_LAYER_URL", "GATEWAY_CONFIG")}
    return {**env, "PYTHONPATH": str(plugin_path), "PYTHONUNBUFFERED": "1"}


def gateway(plugin_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateways", *args], capture_output=True, text=True,
                          env=plugin_env(plugin_path), cwd=plugin_path, timeout=60)


def write_config(directory: Path, redis_url: str, **line: object) -> Path:
    path = directory / "line.yaml"
    path.write_text(yaml.safe_dump({"layer": {"url": redis_url, "prefix": "plugin"}, "line": line}))
    return path


def test_check_reads_the_plugin_section_and_names_a_bad_key(plugin_path, tmp_path):
    # `gateway check` reads the file only: the layer need not be there.
    good = write_config(tmp_path, "redis://127.0.0.1:6379/0", listen=f"127.0.0.1:{free_port()}")
    result = gateway(plugin_path, "check", "--config", str(good))
    assert result.returncode == 0 and "OK (line)" in result.stdout, result.stdout + result.stderr
    bad = write_config(tmp_path, "redis://127.0.0.1:6379/0", listen="nowhere")
    result = gateway(plugin_path, "check", "--config", str(bad))
    assert result.returncode == 2 and "line.listen" in result.stderr, result.stdout + result.stderr


async def test_gateway_line_runs_a_line_round_trip(plugin_path, redis_server, tmp_path):
    port = free_port()
    config = write_config(tmp_path, redis_server.url, listen=f"127.0.0.1:{port}", channel="line.plugin")
    daemon = Daemon("line", [sys.executable, "-m", "gateways", "line", "--config", str(config)],
                    env={"PYTHONPATH": str(plugin_path)}, cwd=plugin_path)
    layer = build_layer(LayerConfig(url=redis_server.url, prefix="plugin"))
    try:
        await asyncio.to_thread(wait_for_port, port, "127.0.0.1", 30)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), 20) == b"OK\n"
        received = await asyncio.wait_for(layer.receive("line.plugin"), 20)
        assert load_schema("line", EXAMPLE / "line_gateway").problem(received) is None
        assert received["text"] == "hello"
        await layer.send(received["reply_channel"], {"type": "line.send", "text": "hi there"})
        assert await asyncio.wait_for(reader.readline(), 20) == b"hi there\n"
        writer.close()
    finally:
        await close_layer(layer)
        code = daemon.stop()
    assert code == 0, daemon.log()


def test_the_example_passes_the_conformance_kit(plugin_path):
    # Run from elsewhere, so the installed copy is tested, not the source beside the tests.
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-c", str(EXAMPLE / "pyproject.toml"), str(EXAMPLE / "tests")],
                            capture_output=True, text=True, env=plugin_env(plugin_path), cwd=plugin_path,
                            timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped" not in result.stdout and "passed" in result.stdout, result.stdout


async def test_gateway_up_runs_the_plugin(plugin_path, redis_server, tmp_path):
    port = free_port()
    config = write_config(tmp_path, redis_server.url, listen=f"127.0.0.1:{port}")
    stack = Daemon("up", [sys.executable, "-m", "gateways", "up", "--config", str(config)],
                   env={"PYTHONPATH": str(plugin_path)}, cwd=plugin_path)
    try:
        await asyncio.to_thread(wait_for_port, port, "127.0.0.1", 60)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), 20) == b"OK\n"
        writer.close()
    finally:
        code = stack.stop()
    assert code == 0, stack.log()
