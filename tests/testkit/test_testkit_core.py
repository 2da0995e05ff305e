"""What every communicator shares: handler exceptions fail the test, stats are the
harness's own, waits end when the consumer is done, messages are validated."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from consumers.email import EmailConsumer
from consumers.mqtt import MqttConsumer, topic
from consumers.testing import (ConsumerHarness, EmailCommunicator, InvalidMessage, MqttCommunicator, NothingSent,
                               WebSocketCommunicator)
from consumers.websocket import WebSocketConsumer


class Exploding(WebSocketConsumer):
    async def receive(self, ws):
        if ws.text == "boom":
            raise ZeroDivisionError("kaboom from the handler")
        await ws.send(text=ws.text)


@pytest.mark.integration
def test_a_handler_exception_fails_a_pytest_test_with_the_handlers_traceback(tmp_path):
    test_file = tmp_path / "test_user_code.py"
    test_file.write_text(textwrap.dedent('''
        from consumers.testing import WebSocketCommunicator
        from consumers.websocket import WebSocketConsumer

        class Exploding(WebSocketConsumer):
            async def receive(self, ws):
                raise ZeroDivisionError("kaboom from the handler")  # the line to see

        async def test_uses_the_kit():
            async with WebSocketCommunicator(Exploding, "/x/") as ws:
                await ws.connect()
                await ws.send_to(text_data="hi")
                assert await ws.receive_nothing()
    '''))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
                          str(test_file)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed" in run.stdout
    assert "ZeroDivisionError: kaboom from the handler" in run.stdout
    assert 'raise ZeroDivisionError("kaboom from the handler")  # the line to see' in run.stdout
    assert "raised in Exploding handling 'websocket.receive'" in run.stdout


async def test_the_exception_is_raised_at_the_next_await():
    async with WebSocketCommunicator(Exploding, "/x/") as ws:
        await ws.connect()
        await ws.send_to(text_data="boom")
        with pytest.raises(ZeroDivisionError, match="kaboom") as raised:
            await ws.receive_from()
        frames = [entry.name for entry in raised.traceback]
        assert "receive" in frames  # the handler's frame is in the traceback
        await ws.send_to(text_data="after")  # the instance goes on
        assert await ws.receive_from() == "after"


async def test_the_exception_is_raised_at_exit_when_nothing_else_awaited():
    with pytest.raises(ZeroDivisionError, match="kaboom"):
        async with WebSocketCommunicator(Exploding, "/x/") as ws:
            await ws.connect()
            await ws.send_to(text_data="boom")


async def test_raise_errors_false_collects_instead():
    async with WebSocketCommunicator(Exploding, "/x/", raise_errors=False) as ws:
        await ws.connect()
        await ws.send_to(text_data="boom")
        assert await ws.receive_nothing()
    assert [type(e) for e in ws.errors] == [ZeroDivisionError]
    assert ws.stats["failed"] == 1


class Counting(MqttConsumer):
    @topic("fail")
    async def fail(self, mqtt):
        raise RuntimeError("counted")

    @topic("ok")
    async def ok(self, mqtt):
        pass


async def test_stats_are_per_harness_never_shared_between_tests():
    async with MqttCommunicator(Counting, raise_errors=False) as first:
        await first.publish("fail")
        await first.publish("ok")
        await first.idle()
    async with MqttCommunicator(Counting) as second:
        await second.publish("ok")
        await second.publish("nowhere")
        await second.idle()
    assert (first.stats["failed"], first.stats["handled"]) == (1, 1)
    assert (second.stats["failed"], second.stats["handled"], second.stats["unmatched"]) == (0, 2, 1)
    assert Counting.stats == {}  # the class's own counters are untouched


class Remembering(EmailConsumer):
    async def email_receive(self, context):
        pass


async def test_email_redelivery_memory_is_per_harness():
    async with EmailCommunicator(Remembering) as first:
        message = await first.deliver(id="same-id")
        assert await first.acked(message)
    async with EmailCommunicator(Remembering) as second:
        await second.harness.deliver(message)
        assert await second.acked(message)
    assert first.stats["handled"] == 1 and second.stats["handled"] == 1
    assert second.stats["duplicates"] == 0  # the first harness's ack is not remembered here


class Gated(WebSocketConsumer):
    gate: asyncio.Event

    async def receive(self, ws):
        await self.gate.wait()
        await ws.send(text="late")


async def test_receive_nothing_waits_for_the_handler_not_for_a_quiet_period():
    Gated.gate = asyncio.Event()
    async with WebSocketCommunicator(Gated, "/g/") as ws:
        await ws.connect()
        await ws.send_to(text_data="x")
        check = asyncio.ensure_future(ws.receive_nothing(timeout=60))
        for _ in range(50):  # plenty of loop turns: a quiet-period check would have answered True
            await asyncio.sleep(0)
        assert not check.done()
        Gated.gate.set()
        assert await check is False
        assert await ws.receive_from() == "late"


async def test_waiting_for_a_message_that_will_not_come_fails_at_once_not_at_the_timeout():
    async with WebSocketCommunicator(Gated, "/g/") as ws:
        await ws.connect()
        # The consumer is idle and sent nothing: NothingSent now, not TimeoutError after 60 s.
        with pytest.raises(NothingSent, match="sent nothing"):
            await ws.receive_from(timeout=60)


class SendsGarbage(WebSocketConsumer):
    async def receive(self, ws):
        await ws._reply({"type": "websocket.send", "text": "ok", "colour": "blue"})


async def test_an_invalid_message_from_the_consumer_fails_with_the_schemas_problem():
    async with WebSocketCommunicator(SendsGarbage, "/bad/") as ws:
        await ws.connect()
        await ws.send_to(text_data="x")
        with pytest.raises(InvalidMessage, match="websocket.send.*colour"):
            await ws.receive_from()


async def test_delivering_an_invalid_message_fails_unless_asked():
    async with ConsumerHarness(Exploding, "ws") as harness:
        with pytest.raises(InvalidMessage, match="websocket.receive"):
            await harness.deliver({"type": "websocket.receive", "text": "no reply channel"})
        await harness.deliver({"type": "websocket.nonsense"}, validate=False)
        await harness.idle()
    assert harness.stats["unhandled"] == 1


async def test_a_stock_channels_consumer_raising_fails_the_test_too():
    from channels.consumer import AsyncConsumer

    class Stock(AsyncConsumer):
        async def mqtt_publish(self, message):
            raise KeyError("stock handler")

    async with MqttCommunicator(Stock) as mqtt:
        await mqtt.publish("t", b"")
        with pytest.raises(KeyError, match="stock handler"):
            await mqtt.idle()
