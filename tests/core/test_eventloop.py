"""Choosing the event loop: uvloop by default where installed, asyncio on request, clear errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import uvloop

from gateways.core import eventloop


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_auto_is_uvloop_when_installed_and_asyncio_on_request(monkeypatch):
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.loop_name() == "uvloop"  # a declared dependency on this platform
    assert isinstance(eventloop.run(running_loop()), uvloop.Loop)
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    loop = eventloop.run(running_loop())
    assert eventloop.loop_name() == "asyncio" and not isinstance(loop, uvloop.Loop)


def test_unknown_choice_is_refused_with_the_variable_named(monkeypatch):
    monkeypatch.setenv(eventloop.ENV, "tokio")
    with pytest.raises(ValueError, match="GATEWAY_EVENT_LOOP='tokio'"):
        eventloop.loop_name()


@pytest.mark.integration
def test_cli_refuses_an_unknown_loop_before_starting(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("layer: {url: 'memory://local'}\n"
                      "email: {listen: '127.0.0.1:0', domains: [demo.local], relay: 'console://'}\n")
    done = subprocess.run([sys.executable, "-m", "gateways", "email", "--config", str(config)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, eventloop.ENV: "tokio"})
    assert done.returncode == 2 and "GATEWAY_EVENT_LOOP='tokio'" in done.stderr
