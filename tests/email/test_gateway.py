"""The real daemon on real Redis: SMTP in (smtplib, swaks, raw sockets), the layer,
acknowledgements and redelivery, the spool, the relay."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from corpus import CORPUS
from email_stack import Layer, Relay, start_gateway, write_config
from gateways.core.specs import load_schema
from servers import gateway_daemon, require_binary, wait_for_port

SCHEMA = load_schema("email")
# Every test talks to a `gateway email` process.
pytestmark = pytest.mark.e2e
MESSAGE = (b"From: you@example.test\r\nTo: inbox@demo.local\r\nSubject: %s\r\n"
           b"Message-ID: <%s@example.test>\r\n\r\nbody\r\n")


def mail(subject: str) -> bytes:
    return MESSAGE % (subject.encode(), subject.replace(" ", "-").encode())


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    """One gateway with routes, a relay and short timeouts, shared by this module."""
    directory = tmp_path_factory.mktemp("email")
    relay = Relay().start()
    config, port = write_config(
        directory, redis_server.url, relay=relay.url, max_message_size=200000, max_recipients=5,
        ack_timeout=1, max_attempts=3, lmtp_listen=f"127.0.0.1:{_free()}",
        senders=["@demo.local", "ops@example.test"],
        routes=[
            {"address": r"support\+(?P<ticket>\d+)@demo\.local", "channel": "email.support"},
            {"subject": r"^\[(?P<tag>\w+)\]", "channel": "email.tagged"},
            {"address": r"redeliver@demo\.local", "channel": "email.redeliver"},
        ],
    )
    gateway = start_gateway(config, port)
    import yaml

    lmtp = int(yaml.safe_load(config.read_text())["email"]["lmtp_listen"].rpartition(":")[2])
    yield {"config": config, "port": port, "gateway": gateway, "relay": relay, "lmtp": lmtp, "dir": directory}
    code = gateway.stop()
    relay.stop()
    assert code == 0, gateway.log()


def _free() -> int:
    from servers import free_port

    return free_port()


@pytest.fixture
async def layer(stack):
    layer = Layer(stack["config"])
    yield layer
    await layer.close()


def smtp(stack) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", stack["port"], timeout=30)


async def receive_and_ack(layer: Layer, channel: str) -> dict:
    message = await layer.receive(channel)
    assert SCHEMA.problem(message) is None, SCHEMA.problem(message)
    await layer.send(message["reply_channel"], {"type": "email.ack", "id": message["id"]})
    return message


async def test_swaks_message_becomes_email_receive(stack, layer):
    swaks = require_binary("swaks", "swaks")
    out = await asyncio.to_thread(subprocess.run, [
        swaks, "--server", f"127.0.0.1:{stack['port']}", "--to", "inbox@demo.local", "--from", "you@example.test",
        "--header", "Subject: from swaks", "--body", "hello from swaks"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 OK queued as" in out.stdout
    message = await receive_and_ack(layer, "email.receive")
    assert message["subject"] == "from swaks"
    assert message["text"].strip() == "hello from swaks"
    assert message["envelope"]["mail_from"] == "you@example.test"
    assert message["envelope"]["rcpt_to"] == ["inbox@demo.local"]
    assert message["envelope"]["tls"] is False and message["attempt"] == 1
    assert message["raw"].startswith(b"Date:") or b"Subject: from swaks" in message["raw"]


async def test_recipients_on_several_routes_get_one_message_per_route(stack, layer):
    with smtp(stack) as client:
        refused = client.sendmail("you@example.test", [
            "support+12@demo.local", "support+13@demo.local", "a@demo.local", "b@demo.local"], mail("[urgent] help"))
    assert refused == {}
    support = await receive_and_ack(layer, "email.support")
    assert support["recipients"] == ["support+12@demo.local", "support+13@demo.local"]
    assert support["route_kwargs"] == {"ticket": "12"}
    tagged = await receive_and_ack(layer, "email.tagged")
    assert tagged["recipients"] == ["a@demo.local", "b@demo.local"] and tagged["route_kwargs"] == {"tag": "urgent"}
    assert support["id"] != tagged["id"] and support["raw"] == tagged["raw"]
    assert await layer.nothing_on("email.support", 1.5)  # acknowledged: no second hand-off


def test_foreign_recipients_size_and_recipient_limits(stack):
    with smtp(stack) as client:
        code, features = client.ehlo("client.test")
        assert code == 250 and b"SIZE 200000" in features
        client.mail("you@example.test")
        code, text = client.rcpt("victim@elsewhere.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, _ = client.rcpt("demo.local@elsewhere.test")
        assert code == 550
        for n in range(5):
            assert client.rcpt(f"r{n}@demo.local")[0] == 250
        code, text = client.rcpt("r5@demo.local")
        assert (code, text[:5]) == (452, b"4.5.3")
        client.rset()
        # smtplib declares SIZE=, refused at MAIL
        with pytest.raises(smtplib.SMTPSenderRefused) as declared:
            client.sendmail("you@example.test", ["inbox@demo.local"], b"Subject: big\r\n\r\n" + b"x" * 300000)
        assert declared.value.smtp_code == 552 and declared.value.smtp_error.startswith(b"5.3.4")
    # a client that does not declare the size is refused after DATA
    body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 300
    answer = _converse(stack["port"], b"EHLO c.test\r\nMAIL FROM:<you@example.test>\r\nRCPT TO:<inbox@demo.local>\r\n"
                       b"DATA\r\n" + body + b".\r\nQUIT\r\n")
    assert b"552 5.3.4" in answer and b"queued as" not in answer


def _converse(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("ending", [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n"])
async def test_smtp_smuggling_is_rejected(stack, layer, ending):
    smuggled = (b"EHLO attacker.test\r\nMAIL FROM:<you@example.test>\r\nRCPT TO:<inbox@demo.local>\r\nDATA\r\n"
                b"Subject: first\r\n\r\nfirst body" + ending +
                b"MAIL FROM:<admin@demo.local>\r\nRCPT TO:<inbox@demo.local>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\nQUIT\r\n")
    answer = await asyncio.to_thread(_converse, stack["port"], smuggled)
    assert b"550 5.6.11 bare" in answer, answer
    assert b"queued as" not in answer
    assert await layer.nothing_on("email.receive", 1.5)


async def test_unacknowledged_message_is_handed_again_then_dead_lettered(stack, layer):
    with smtp(stack) as client:
        client.sendmail("you@example.test", ["redeliver@demo.local"], mail("never acked"))
    seen = [await layer.receive("email.redeliver") for _ in range(3)]
    assert [m["attempt"] for m in seen] == [1, 2, 3]
    assert len({m["id"] for m in seen}) == 1 and all(SCHEMA.problem(m) is None for m in seen)
    dead = await layer.receive("email.dead")
    assert SCHEMA.problem(dead) is None
    assert dead["id"] == seen[0]["id"] and dead["dead_letter"]["attempts"] == 3
    assert dead["dead_letter"]["channel"] == "email.redeliver"
    assert Path(dead["dead_letter"]["spool_path"]).is_file()
    assert await layer.nothing_on("email.redeliver", 2.5)


async def test_one_ack_with_ids_acknowledges_each(stack, layer):
    with smtp(stack) as client:
        for n in range(3):
            client.sendmail("you@example.test", ["redeliver@demo.local"], mail(f"batched ack {n}"))
    seen = [await layer.receive("email.redeliver") for _ in range(3)]
    ids = [m["id"] for m in seen]
    await layer.send(seen[0]["reply_channel"], {"type": "email.ack", "id": ids[0], "ids": ids[1:]})
    assert await layer.nothing_on("email.redeliver", 2.5), "an id in ids was handed again"


async def test_lmtp_answers_per_recipient(stack, layer):
    client = smtplib.LMTP("127.0.0.1", stack["lmtp"], timeout=30)
    try:
        client.ehlo("postfix.test")
        assert client.sendmail("you@example.test", ["l1@demo.local", "l2@demo.local"], mail("via lmtp")) == {}
    finally:
        client.quit()
    message = await receive_and_ack(layer, "email.receive")
    assert message["recipients"] == ["l1@demo.local", "l2@demo.local"] and message["subject"] == "via lmtp"


async def test_malformed_corpus_is_delivered_with_raw_bytes(stack, layer):
    with smtp(stack) as client:
        for name, raw in CORPUS.items():
            client.sendmail("you@example.test", ["corpus@demo.local"], raw)
    received = {}
    for _ in CORPUS:
        message = await receive_and_ack(layer, "email.receive")
        received[message["raw"]] = message
    for name, raw in CORPUS.items():
        expected = raw if raw.endswith(b"\r\n") else raw + b"\r\n"  # smtplib ends the data with CRLF
        assert expected in received, name
    assert stack["gateway"].proc.poll() is None


async def test_email_send_through_the_relay(stack, layer):
    relay = stack["relay"]
    before = len(relay.handler.messages)
    await layer.send("email.send", {
        "type": "email.send", "id": "s1", "reply_channel": "test.outcome", "from": "Ops <ops@example.test>",
        "to": ["you@example.test"], "bcc": ["audit@example.test"], "subject": "hello", "text": "text body",
        "html": "<p>html</p>", "attachments": [{"filename": "a.txt", "content_type": "text/plain",
                                               "content": b"attached"}]})
    sent = await layer.receive("test.outcome")
    assert SCHEMA.problem(sent) is None and sent["type"] == "email.sent", sent
    assert sent["id"] == "s1" and sent["response"].startswith("250") and sent["attempts"] == 1
    got = relay.handler.wait_for(before + 1)[-1]
    assert got["mail_from"] == "ops@example.test"
    assert got["rcpt_tos"] == ["you@example.test", "audit@example.test"]
    assert b"audit@example.test" not in got["data"] and b"Subject: hello" in got["data"]


async def test_relay_refusals_and_retries(stack, layer):
    relay = stack["relay"]
    relay.handler.fail = ["550 5.7.1 no thanks"]
    await layer.send("email.send", {"type": "email.send", "id": "p", "reply_channel": "test.outcome",
                                    "from": "a@demo.local", "to": "you@example.test", "text": "x"})
    failed = await layer.receive("test.outcome")
    assert SCHEMA.problem(failed) is None
    assert (failed["type"], failed["code"], failed["permanent"], failed["attempts"]) == ("email.failed", 550, True, 1)
    assert "no thanks" in failed["error"]
    relay.handler.fail = ["451 4.3.0 later", "421 4.3.2 busy"]
    await layer.send("email.send", {"type": "email.send", "id": "t", "reply_channel": "test.outcome",
                                    "from": "a@demo.local", "to": "you@example.test", "text": "x"})
    sent = await layer.receive("test.outcome")
    assert (sent["type"], sent["attempts"]) == ("email.sent", 3), sent


async def test_disallowed_sender_and_invalid_send_are_reported(stack, layer):
    await layer.send("email.send", {"type": "email.send", "id": "bad-from", "reply_channel": "test.outcome",
                                    "from": "ceo@bank.test", "to": "you@example.test", "text": "x"})
    failed = await layer.receive("test.outcome")
    assert failed["type"] == "email.failed" and "not allowed" in failed["error"] and failed["permanent"]
    await layer.send("email.send", {"type": "email.send", "id": "bad-key", "reply_channel": "test.outcome",
                                    "from": "a@demo.local", "to": "you@example.test", "body": "x"})
    failed = await layer.receive("test.outcome")
    assert failed["type"] == "email.failed" and "invalid email.send" in failed["error"]
    await layer.send("email.send", {"type": "email.send", "id": "inject", "reply_channel": "test.outcome",
                                    "from": "a@demo.local", "to": "you@example.test", "subject": "x\r\nBcc: v@x.test"})
    failed = await layer.receive("test.outcome")
    assert failed["type"] == "email.failed" and "line breaks" in failed["error"]
    assert stack["gateway"].proc.poll() is None


@pytest.mark.parametrize("header", [b"From: The CEO <ceo@bank.test>", b"Sender: ceo@bank.test",
                                    b"From: a@demo.local, ceo@bank.test", b"From: nobody"])
async def test_raw_send_is_held_to_the_sender_policy_by_its_own_headers(stack, layer, header):
    raw = (b"From: a@demo.local\r\n" if not header.startswith(b"From") else b"") + header + \
        b"\r\nTo: you@example.test\r\nSubject: wire transfer\r\n\r\npay now\r\n"
    before = len(stack["relay"].handler.messages)
    await layer.send("email.send", {"type": "email.send", "id": "spoof", "reply_channel": "test.outcome",
                                    "from": "a@demo.local", "to": "you@example.test", "raw": raw})
    failed = await layer.receive("test.outcome")
    assert SCHEMA.problem(failed) is None
    assert failed["type"] == "email.failed" and failed["permanent"], failed
    assert "email.senders" in failed["error"]
    assert ("ceo@bank.test" in failed["error"]) if b"ceo" in header else ("no address" in failed["error"])
    # A permitted raw message still goes out, after the refused one: nothing of that reached the relay.
    allowed = b"From: Ops <ops@example.test>\r\nSender: a@demo.local\r\nTo: you@example.test\r\n\r\nhi\r\n"
    await layer.send("email.send", {"type": "email.send", "id": "fine", "reply_channel": "test.outcome",
                                    "from": "a@demo.local", "to": "you@example.test", "raw": allowed})
    sent = await layer.receive("test.outcome")
    assert sent["type"] == "email.sent", sent
    delivered = stack["relay"].handler.wait_for(before + 1)
    assert [m["data"] for m in delivered[before:]] == [allowed]
    assert stack["gateway"].proc.poll() is None


@pytest.mark.parametrize("headers, error", [
    ([["Sender", "ceo@bank.test"]], "'ceo@bank.test' is not allowed"),
    ([["Resent-From", "CEO <ceo@bank.test>"]], "'ceo@bank.test' is not allowed"),
    ([["From", "ceo@bank.test"]], "at most 1 From"),
])
async def test_extra_headers_cannot_name_another_author(stack, layer, headers, error):
    before = len(stack["relay"].handler.messages)
    await layer.send("email.send", {"type": "email.send", "id": "extra", "reply_channel": "test.outcome",
                                    "from": "a@demo.local", "to": "you@example.test", "text": "x",
                                    "headers": headers})
    failed = await layer.receive("test.outcome")
    assert SCHEMA.problem(failed) is None
    assert failed["type"] == "email.failed" and failed["permanent"] and error in failed["error"], failed
    assert len(stack["relay"].handler.messages) == before
    assert stack["gateway"].proc.poll() is None


async def test_spool_that_cannot_grow_gets_451_and_loses_nothing(redis_server, tmp_path):
    # The active spool segment is zero-filled ahead, so a disk that refuses new files
    # (full, read-only) stops mail only when a new segment is needed: here, for a
    # message larger than what is left of the segment (8 MiB).
    config, port = write_config(tmp_path, redis_server.url, max_message_size=12 * 1024 * 1024)
    gateway = start_gateway(config, port)
    layer = Layer(config)
    spool_tmp = tmp_path / f"spool-{port}" / "tmp"
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("you@example.test", ["inbox@demo.local"], mail("keeps the segment open"))
            shutil.rmtree(spool_tmp)
            spool_tmp.write_text("not a directory")  # root ignores permissions; a file in the way fails for anyone
            client.sendmail("you@example.test", ["inbox@demo.local"], mail("fits"))
            big = mail("too big for the segment") + (b"x" * 998 + b"\r\n") * 9500  # ~9.5 MB
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("you@example.test", ["inbox@demo.local"], big)
            assert refused.value.smtp_code == 451 and refused.value.smtp_error.startswith(b"4.3.0")
            spool_tmp.unlink()
            spool_tmp.mkdir()
            client.sendmail("you@example.test", ["inbox@demo.local"], mail("spool back"))
        subjects = [(await receive_and_ack(layer, "email.receive"))["subject"] for _ in range(3)]
        assert subjects == ["keeps the segment open", "fits", "spool back"]
        assert "cannot be written" in gateway.log()
    finally:
        await layer.close()
        assert gateway.stop() == 0, gateway.log()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_gateway_runs_on_either_event_loop_and_frees_slots_of_dropped_clients(redis_server, tmp_path, loop):
    # Clients that hang up right after connecting (port probes, impatient MTAs) must
    # give their slot back: under uvloop aiosmtpd left such connections half-open.
    config, port = write_config(tmp_path, redis_server.url, max_connections=2)
    gateway = gateway_daemon("email", config, env={"GATEWAY_EVENT_LOOP": loop})
    try:
        wait_for_port(port, timeout=30)
        for _ in range(5):
            socket.create_connection(("127.0.0.1", port), timeout=30).close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as first, \
                        smtplib.SMTP("127.0.0.1", port, timeout=30) as second:
                    assert first.noop()[0] == 250 and second.noop()[0] == 250
                    first.sendmail("you@example.test", ["inbox@demo.local"], mail(f"on {loop}"))
                    break
            except smtplib.SMTPConnectError as exc:  # 421: a dropped client still holds a slot
                assert exc.smtp_code == 421
            assert time.monotonic() < deadline, "slots of dropped connections were never freed"
            time.sleep(0.2)
        assert f"event loop: {loop}" in gateway.log()
    finally:
        assert gateway.stop() == 0, gateway.log()


def test_connections_over_the_limit_get_421(redis_server, tmp_path):
    config, port = write_config(tmp_path, redis_server.url, max_connections=2)
    gateway = start_gateway(config, port)
    held = []
    try:
        # The probe that saw the port open was a connection too: its slot is free
        # once the server has seen it close, which may come after the next accept.
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            if sock.recv(1024).startswith(b"220 "):
                held.append(sock)
                if len(held) == 2:
                    break
            else:
                sock.close()
                time.sleep(0.1)
        assert len(held) == 2, "two connections within the limit never got their banner"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as third:
            assert third.recv(1024).startswith(b"421 4.3.2")
        held.pop().close()
        for _ in range(50):  # until the server has seen the close and freed the slot
            with socket.create_connection(("127.0.0.1", port), timeout=30) as again:
                if again.recv(1024).startswith(b"220 "):
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("a freed connection slot was never reused")
    finally:
        for sock in held:
            sock.close()
        assert gateway.stop() == 0, gateway.log()
