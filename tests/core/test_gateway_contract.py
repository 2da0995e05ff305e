"""The gateway contract, through the real core and a real Redis: a tiny gateway
of this file's own ("echo") gets valid messages, and the core validates,
answers invalid ones through the one hook, and reports results."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateways.core.backoff import Backoff, receive_with_backoff
from gateways.core.config import GatewaySection, channel_name, parse_config
from gateways.core.daemon import Daemon
from gateways.core.gateway import Gateway, InvalidMessage
from gateways.core.layer import build_layer, close_layer
from gateways.core.lifecycle import on_stop_signals

ECHO_SCHEMA = {
    "protocol": "echo",
    "version": "1.0",
    "$defs": {"id": {"type": "string", "minLength": 1}},
    "messages": {
        "echo.send": {
            "type": "object",
            "required": ["type", "id", "text"],
            "properties": {"type": {"const": "echo.send"}, "id": {"$ref": "#/$defs/id"},
                           "text": {"type": "string"}, "reply_channel": {"type": "string"}},
            "additionalProperties": False,
        },
        "echo.result": {
            "type": "object",
            "required": ["type", "id", "ok", "error"],
            "properties": {"type": {"const": "echo.result"}, "id": {"type": ["string", "null"]},
                           "ok": {"type": "boolean"}, "error": {"type": ["string", "null"]},
                           "text": {"type": "string"}},
            "additionalProperties": False,
        },
    },
}


@dataclass
class EchoSection(GatewaySection):
    """The echo gateway's section: only the channel consumers send to."""

    send_channel: str = channel_name("echo.send", "channel consumers send echo.send to")


def echo_result(message: dict[str, Any], ok: bool, error: str | None, **extra: Any) -> dict[str, Any]:
    request_id = message.get("id")
    return {"type": "echo.result", "id": request_id if isinstance(request_id, str) else None, "ok": ok,
            "error": error, **extra}


def echo_gateway_class(specs_dir: Path) -> type[Gateway]:
    class EchoGateway(Gateway, protocol="echo", section_class=EchoSection, specs_dir=specs_dir):
        """Echoes each echo.send's text in its result; refuses the text "refuse"."""

        handled: list[dict[str, Any]] = []

        async def handle(self, channel: str, message: dict[str, Any]) -> None:
            if message["text"] == "refuse":
                raise InvalidMessage("the text 'refuse' is refused")
            self.handled.append(message)
            await self.runtime.report(message, echo_result(message, True, None, text=message["text"]))

        def failure_result(self, message: dict[str, Any], problem: str) -> dict[str, Any]:
            return echo_result(message, False, problem)

    return EchoGateway


@pytest.fixture
async def echo(redis_server, tmp_path):
    """A started echo daemon, a layer to play the consumer, and the gateway class."""
    (tmp_path / "echo.schema.json").write_text(json.dumps(ECHO_SCHEMA))
    gateway_class = echo_gateway_class(tmp_path)
    prefix = f"contract{uuid.uuid4().hex[:8]}"
    config = parse_config(f"layer: {{url: '{redis_server.url}', prefix: {prefix}}}\necho: {{grace_period: 1}}\n",
                          section_classes={"echo": EchoSection}, environ={})
    daemon = Daemon(gateway_class, config)
    await daemon.start()
    consumer = build_layer(config.layer)
    try:
        yield daemon, consumer
    finally:
        await daemon.shutdown()
        await close_layer(consumer)


async def ask(consumer: Any, message: dict[str, Any]) -> dict[str, Any]:
    """Send ``message`` to echo.send with a reply channel of its own; the result."""
    reply = await consumer.new_channel()
    await consumer.send("echo.send", {**message, "reply_channel": reply})
    return await asyncio.wait_for(consumer.receive(reply), 10)


def test_class_keywords_and_send_channels_default(tmp_path):
    gateway_class = echo_gateway_class(tmp_path)
    assert (gateway_class.protocol, gateway_class.section_class, gateway_class.specs_dir) == (
        "echo", EchoSection, tmp_path)
    assert gateway_class(_FakeRuntime(), EchoSection(send_channel="echo.in")).send_channels() == ["echo.in"]
    assert Gateway(_FakeRuntime(), GatewaySection()).send_channels() == []


async def test_valid_message_is_handled_and_its_result_reported(echo):
    daemon, consumer = echo
    result = await ask(consumer, {"type": "echo.send", "id": "m1", "text": "hello"})
    assert result == {"type": "echo.result", "id": "m1", "ok": True, "error": None, "text": "hello"}
    assert daemon.runtime.schema.problem(result) is None


async def test_schema_invalid_message_gets_the_protocols_failure_result(echo, caplog):
    daemon, consumer = echo
    with caplog.at_level(logging.ERROR, logger="gateway.echo"):
        result = await ask(consumer, {"type": "echo.send", "id": "m2", "text": 5})
    assert result["ok"] is False and result["id"] == "m2"
    assert result["error"].startswith("echo.send: text: 5 is not of type 'string'"), result
    assert "invalid message on echo.send: echo.send: text" in caplog.text
    assert daemon.runtime.metrics.value("invalid_messages_total", type="echo.send") == 1


async def test_message_the_gateway_refuses_gets_the_same_answer(echo, caplog):
    daemon, consumer = echo
    with caplog.at_level(logging.ERROR, logger="gateway.echo"):
        result = await ask(consumer, {"type": "echo.send", "id": "m3", "text": "refuse"})
    assert result == {"type": "echo.result", "id": "m3", "ok": False, "error": "the text 'refuse' is refused"}
    assert "invalid message on echo.send: the text 'refuse' is refused" in caplog.text
    assert daemon.runtime.metrics.value("invalid_messages_total", type="echo.send") == 1


async def test_invalid_message_without_reply_channel_is_counted_and_the_daemon_goes_on(echo):
    daemon, consumer = echo
    await consumer.send("echo.send", {"type": "echo.send", "text": "no id, no reply channel"})
    await consumer.send("echo.send", {"type": "echo.unknown"})
    result = await ask(consumer, {"type": "echo.send", "id": "m4", "text": "still here"})
    assert result["ok"] is True
    metrics = daemon.runtime.metrics
    assert metrics.value("invalid_messages_total", type="echo.send") == 1
    assert metrics.value("invalid_messages_total", type="echo.unknown") == 1


async def test_a_result_the_layer_does_not_take_is_counted_not_raised(echo, caplog):
    daemon, _consumer = echo
    runtime = daemon.runtime
    message = {"type": "echo.send", "id": "m5", "text": "x", "reply_channel": "echo.result.full"}
    runtime.layer.capacity = 0  # every send is refused: ChannelFull
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.echo"):
            assert await runtime.report(message, echo_result(message, True, None)) is False
    finally:
        runtime.layer.capacity = 100
    assert "could not report echo.result of m5 to echo.result.full" in caplog.text
    assert runtime.metrics.value("results_lost_total", type="echo.result") == 1
    assert await runtime.report({"type": "echo.send"}, echo_result(message, True, None)) is False


async def test_receive_with_backoff_retries_until_a_message_comes():
    failures: list[Exception] = [OSError("layer down"), ValueError("undecodable"), OSError("still down")]
    seen: dict[str, list[BaseException]] = {"layer": [], "other": []}

    async def receive() -> str:
        if failures:
            raise failures.pop(0)
        return "message"

    backoff = Backoff(initial=0.001, maximum=0.002)
    got = await receive_with_backoff(receive, backoff, (OSError,), seen["layer"].append, seen["other"].append)
    assert got == "message"
    assert [str(e) for e in seen["layer"]] == ["layer down", "still down"]
    assert [str(e) for e in seen["other"]] == ["undecodable"]
    assert backoff.attempts == 0  # reset by the success


async def test_stop_signals_call_back_once_installed():
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    assert on_stop_signals(loop, stopped.set)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stopped.wait(), 10)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def test_stop_signals_outside_the_main_thread_are_not_installed():
    installed: list[bool] = []

    def in_thread() -> None:
        loop = asyncio.new_event_loop()
        try:
            installed.append(on_stop_signals(loop, lambda: None))
        finally:
            loop.close()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(10)
    assert installed == [False]


class _FakeRuntime:
    """Just what Gateway.__init__ reads."""

    log = logging.getLogger("gateway.test")
