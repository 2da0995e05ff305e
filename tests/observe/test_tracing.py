"""One trace per message: a WebSocket frame through a real gateway, the layer
and a real `gateway worker`, and the echo going out, as the spans both
processes export (to a file each, one JSON object per line)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import websockets

from gateways.core import tracing
from servers import PYTHON, Daemon, gateway_daemon, wait_for_port, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "websocket"))
from ws_stack import CHANNELS, ORIGIN, write_config  # noqa: E402


def spans(path: Path) -> list[dict]:
    """The spans exported to ``path`` so far."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tracing_is_off_without_the_environment_asking():
    assert not tracing.enabled()
    message = {"type": "websocket.receive", "trace": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}}
    assert tracing.consuming(message, "websocket.echo") is tracing.consuming({}, None)  # the shared no-op


@pytest.mark.e2e
async def test_a_frame_and_its_echo_share_one_trace(redis_server, tmp_path):
    config, port = write_config(tmp_path, redis_server.url)
    gateway_spans, worker_spans = tmp_path / "gateway.jsonl", tmp_path / "worker.jsonl"
    gateway = gateway_daemon("websocket", config, env={tracing.FILE_VARIABLE: str(gateway_spans)})
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), *CHANNELS],
                    env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3"), tracing.FILE_VARIABLE: str(worker_spans)})
    try:
        wait_for_port(port, timeout=30)
        worker.wait_for_log("Running worker for channels", timeout=30)
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo/", origin=ORIGIN, open_timeout=15) as ws:
            await ws.send("traced frame")
            assert await asyncio.wait_for(ws.recv(), 15) == "traced frame"
        handoff = await asyncio.to_thread(wait_until, lambda: [
            s for s in spans(gateway_spans)
            if s["name"] == "send websocket.echo" and s["attributes"].get("gateway.message.type") == "websocket.receive"
        ], 15, "the gateway's span of the frame's hand-off")
        trace_id = handoff[0]["context"]["trace_id"]
        processed = await asyncio.to_thread(wait_until, lambda: [
            s for s in spans(worker_spans)
            if s["name"] == "process websocket.echo" and s["context"]["trace_id"] == trace_id
        ], 15, "the worker's span of the frame, in the frame's trace")
        delivered = await asyncio.to_thread(wait_until, lambda: [
            s for s in spans(gateway_spans)
            if s["name"] == "deliver websocket.send" and s["context"]["trace_id"] == trace_id
        ], 15, "the gateway's span of the echo going out, in the frame's trace")
        # A chain, not three spans that merely share an id.
        assert processed[0]["parent_id"] == handoff[0]["context"]["span_id"]
        assert delivered[0]["parent_id"] == processed[0]["context"]["span_id"]
        assert handoff[0]["kind"] == "SpanKind.PRODUCER"
        assert handoff[0]["resource"]["attributes"]["service.name"] == "gateway-websocket"
        assert processed[0]["resource"]["attributes"]["service.name"] == "gateway-worker"
        # Each message its own trace: the connect was another one.
        connects = [s for s in spans(gateway_spans) if s["attributes"].get("gateway.message.type") == "websocket.connect"]
        assert connects and all(s["context"]["trace_id"] != trace_id for s in connects)
    finally:
        worker.stop()
        gateway.stop()
