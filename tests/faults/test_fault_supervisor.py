"""`gateway up` killed with SIGKILL takes its whole stack with it, and a port
held by a stale process is never a silent failure.

Real processes: `gateway up` with the embedded layer server, the WebSocket and
email gateways and a `gateway worker` on the demo project.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
import yaml

from servers import PYTHON, REPO, Daemon, child_pids, free_port, wait_for_port

pytestmark = pytest.mark.e2e


def stack_config(directory: Path) -> tuple[Path, int, int]:
    """The demo's WebSocket and email gateways on free ports, its worker, an embedded layer."""
    ws_port, smtp_port = free_port(), free_port()
    config = {
        "django": {"settings": "demo.settings", "path": [str(REPO / "example")]},
        "websocket": {"listen": f"127.0.0.1:{ws_port}",
                      "routes": [{"path": "^/echo/$", "channel": "websocket.echo"}]},
        "email": {"listen": f"127.0.0.1:{smtp_port}", "domains": ["demo.local"],
                  "relay": f"file://{directory / 'mail'}", "spool": str(directory / "spool")},
    }
    path = directory / "stack.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, ws_port, smtp_port


def start_up(config: Path, directory: Path, *ports: int) -> Daemon:
    up = Daemon("up", [PYTHON, "-m", "gateways", "up", "--config", str(config)],
                env={"DEMO_DATABASE": str(directory / "db.sqlite3")})
    for port in ports:
        try:
            wait_for_port(port, timeout=40)
        except TimeoutError:
            up.stop()
            raise AssertionError(f"gateway up did not listen on {port}:\n{up.log()}")
    up.wait_for_log("Running worker for channels", timeout=40)
    return up


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children first."""
    found, todo = [], [pid]
    while todo:
        for child in child_pids(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie left for an init that does not reap is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def wait_until(condition, timeout: float, what) -> None:
    """Poll ``condition`` until true; fail with ``what()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what()} after {timeout}s")
        time.sleep(0.05)


async def echo(port: int, text: str) -> str:
    async with websockets.connect(f"ws://127.0.0.1:{port}/echo/", open_timeout=20) as ws:
        await ws.send(text)
        return await asyncio.wait_for(ws.recv(), 20)


async def test_sigkill_of_gateway_up_ends_every_child_and_a_new_stack_binds(tmp_path):
    config, ws_port, smtp_port = stack_config(tmp_path)
    up = start_up(config, tmp_path, ws_port, smtp_port)
    children: list[int] = []
    try:
        assert await echo(ws_port, "first stack") == "first stack"
        children = descendants(up.proc.pid)
        commands = " | ".join(command(pid) for pid in children)
        # The embedded layer server, both gateways and the worker.
        for part in ("valkey", "gateways websocket", "gateways email", "gateways worker"):
            assert part in commands, commands
        os.kill(up.proc.pid, signal.SIGKILL)
        up.proc.wait()
        wait_until(lambda: not [pid for pid in children if running(pid)], 30,
                   lambda: f"children of the killed gateway up still run: "
                           f"{[command(pid) for pid in children if running(pid)]}")
    finally:
        up.stop()
        for pid in children:  # what the test failed to see end
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    # The runtime file the killed stack left names a dead pid: not in the way.
    second = start_up(config, tmp_path, ws_port, smtp_port)
    try:
        assert await echo(ws_port, "second stack") == "second stack"
        with socket.create_connection(("127.0.0.1", smtp_port), timeout=10) as smtp:
            assert smtp.recv(100).startswith(b"220")
    finally:
        assert second.stop() == 0, second.log()


async def test_a_second_gateway_up_over_a_live_stack_is_refused(tmp_path):
    config, ws_port, smtp_port = stack_config(tmp_path)
    up = start_up(config, tmp_path, ws_port, smtp_port)
    try:
        second = subprocess.run([PYTHON, "-m", "gateways", "up", "--config", str(config)], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"already runs (gateway up, pid {up.proc.pid}" in second.stderr, second.stderr
        # The first stack is untouched.
        assert await echo(ws_port, "still here") == "still here"
    finally:
        assert up.stop() == 0, up.log()


def test_a_port_held_by_another_process_is_named_with_its_holder(tmp_path, redis_server):
    holder_port = free_port()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import socket, time\n"
                               "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                               f"s.bind(('127.0.0.1', {holder_port})); s.listen(); print('ready', flush=True)\n"
                               "time.sleep(600)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        config = tmp_path / "ws.yaml"
        config.write_text(yaml.safe_dump({
            "layer": {"url": redis_server.url, "prefix": "holder"},
            "websocket": {"listen": f"127.0.0.1:{holder_port}",
                          "routes": [{"path": "^/$", "channel": "websocket.x"}]},
        }))
        gateway = subprocess.run([PYTHON, "-m", "gateways", "websocket", "--config", str(config)], cwd=REPO,
                                 capture_output=True, text=True, timeout=60)
        assert gateway.returncode == 1, gateway.stderr
        assert "Traceback" not in gateway.stderr, gateway.stderr
        assert f"cannot listen on 127.0.0.1:{holder_port}: the port is already in use by pid {holder.pid}" \
            in gateway.stderr, gateway.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_gateway_whose_lifeline_closes_stops_gracefully(tmp_path, redis_server):
    """The portable half, without the parent-death signal: a `gateway` process
    started with a lifeline drains and exits 0 once the write end closes."""
    port = free_port()
    config = tmp_path / "ws.yaml"
    config.write_text(yaml.safe_dump({
        "layer": {"url": redis_server.url, "prefix": "lifeline"},
        "websocket": {"listen": f"127.0.0.1:{port}", "grace_period": 2,
                      "routes": [{"path": "^/$", "channel": "websocket.x"}]},
    }))
    read_end, write_end = os.pipe()
    gateway = subprocess.Popen([PYTHON, "-m", "gateways", "websocket", "--config", str(config)], cwd=REPO,
                               env={**os.environ, "GATEWAY_LIFELINE_FD": str(read_end)},
                               pass_fds=(read_end,), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.close(read_end)
    try:
        wait_for_port(port, timeout=30)
        os.close(write_end)
        output, _ = gateway.communicate(timeout=30)
        assert gateway.returncode == 0, output
        assert "the supervisor) is gone: stopping" in output, output
        assert "websocket gateway stopped" in output, output
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
