"""The parser child process: the same fields as parsing in place, and a fallback when it is gone."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import time

import msgpack
import pytest

from corpus import CORPUS
from email_stack import Layer, start_gateway, write_config
from gateways.core.specs import load_schema
from gateways.email.parsing import ParserProcess
from protocol_specs.email import parse_message
from servers import child_pids

SCHEMA = load_schema("email")


def as_layer_sees_it(value):
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


@pytest.mark.integration
async def test_child_parses_the_corpus_as_parse_message_does():
    parser = ParserProcess()
    await parser.start()
    try:
        names = list(CORPUS)
        results = await asyncio.gather(*(parser.parse(CORPUS[name]) for name in names))  # one batch
        for name, result in zip(names, results):
            assert result is not None, name
            assert result == as_layer_sees_it(parse_message(CORPUS[name])), name
    finally:
        await parser.close()


@pytest.mark.integration
async def test_a_dead_child_means_parsing_in_place_then_a_new_child():
    parser = ParserProcess()
    await parser.start()
    try:
        first = parser._process
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        results = []
        while parser._process is None or parser._process is first or not parser._ready.is_set():
            results.append(await parser.parse(CORPUS["nested_multiparts"]))
            assert time.monotonic() < deadline, "the parser process was not restarted"
            await asyncio.sleep(0.05)
        assert None in results, "a parse while the child was gone did not fall back"
        again = await parser.parse(CORPUS["nested_multiparts"])
        assert again == as_layer_sees_it(parse_message(CORPUS["nested_multiparts"]))
    finally:
        await parser.close()
    assert parser._process is None or parser._process.returncode is not None


@pytest.mark.e2e
async def test_gateway_delivers_parsed_mail_without_its_parser_process(redis_server, tmp_path):
    config, port = write_config(tmp_path, redis_server.url)
    gateway = start_gateway(config, port)
    layer = Layer(config)
    try:
        (parser_pid,) = child_pids(gateway.proc.pid)
        os.kill(parser_pid, signal.SIGKILL)
        for name in ("nested_multiparts", "broken_boundary"):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail("you@example.test", ["inbox@demo.local"], CORPUS[name])
            message = await layer.receive("email.receive")
            assert SCHEMA.problem(message) is None
            expected = as_layer_sees_it(parse_message(CORPUS[name]))
            assert message["parts"] == expected["parts"] and message["subject"] == expected["subject"]
            await layer.send(message["reply_channel"], {"type": "email.ack", "id": message["id"]})
        deadline = time.monotonic() + 30
        while not [p for p in child_pids(gateway.proc.pid) if p != parser_pid]:
            assert time.monotonic() < deadline, "no new parser process"
            await asyncio.sleep(0.1)
        assert "parser process" in gateway.log()
    finally:
        await layer.close()
        assert gateway.stop() == 0, gateway.log()


@pytest.mark.integration
async def test_a_hung_child_is_replaced_and_its_batch_parsed_elsewhere():
    parser = ParserProcess(timeout=1.0)
    await parser.start()
    try:
        hung = parser._process
        os.kill(hung.pid, signal.SIGSTOP)  # alive, but parsing nothing
        began = time.monotonic()
        assert await asyncio.wait_for(parser.parse(CORPUS["nested_multiparts"]), 10) is None
        assert time.monotonic() - began >= 0.9
        deadline = time.monotonic() + 30
        while parser._process is None or parser._process is hung or not parser._ready.is_set():
            assert time.monotonic() < deadline, "no new parser process"
            await asyncio.sleep(0.05)
        assert await parser.parse(CORPUS["nested_multiparts"]) == as_layer_sees_it(
            parse_message(CORPUS["nested_multiparts"]))
        assert hung.returncode is not None, "the hung child was left running"
    finally:
        await parser.close()
