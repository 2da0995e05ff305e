"""`gateway up` runs the demo stack as separate processes and stops it cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest
import websockets
import yaml

from gateways.core.layer import embedded_layer_url
from servers import REPO, Daemon, free_port, wait_for_group, wait_for_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def demo_stack(tmp_path):
    """The demo config with the WebSocket gateway on a free port and only the
    sections this test is about (the others have tests of their own)."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    port = free_port()
    config["websocket"]["listen"] = f"127.0.0.1:{port}"
    config = {"django": {**config["django"], "path": [str(REPO / "example")]}, "websocket": config["websocket"]}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    up = Daemon("up", [sys.executable, "-m", "gateways", "up", "--config", str(path)],
                env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3")})
    wait_for_port(port, timeout=30)
    up.wait_for_log("Running worker for channels")
    yield up, port
    up.stop()


async def test_demo_echo_and_chat_then_ctrl_c_stops_everything(demo_stack):
    up, port = demo_stack
    async with websockets.connect(f"ws://127.0.0.1:{port}/echo/", open_timeout=20) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 10) == "hello"
        await ws.send(b"\x01\x02")
        assert await asyncio.wait_for(ws.recv(), 10) == b"\x01\x02"
    async with websockets.connect(f"ws://127.0.0.1:{port}/chat/demo/") as a, \
            websockets.connect(f"ws://127.0.0.1:{port}/chat/demo/") as b:
        await wait_for_group(embedded_layer_url(up.proc.args[-1]), "asgi", "chat.demo", 2)
        await a.send("hi room")
        assert await asyncio.wait_for(b.recv(), 10) == "hi room"
        assert await asyncio.wait_for(a.recv(), 10) == "hi room"
    up.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(up.proc.wait, 40) == 0
    log = up.log()
    assert "websocket gateway stopped" in log
    assert re.search(r"^up +\| stopped$", log, re.M), log
    assert "layer: embedded Valkey" in log


async def test_a_child_that_dies_is_reported_and_restarted(demo_stack):
    up, port = demo_stack
    workers = [pid for pid in _children(up.proc.pid) if "worker" in _cmdline(pid)]
    assert len(workers) == 1, [_cmdline(p) for p in _children(up.proc.pid)]
    os.kill(workers[0], signal.SIGKILL)
    up.wait_for_log("exited with code -9; restarting", timeout=20)
    up.wait_for_log("Running worker for channels", timeout=30)
    async with websockets.connect(f"ws://127.0.0.1:{port}/echo/", open_timeout=20) as ws:
        await ws.send("after restart")
        assert await asyncio.wait_for(ws.recv(), 20) == "after restart"


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = open(f"/proc/{entry}/status").read()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return ""
