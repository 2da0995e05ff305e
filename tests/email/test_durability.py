"""What 250 promises: mail survives Redis being down and the gateway restarting;
replies survive a relay that is down for a while."""

from __future__ import annotations

import smtplib

import pytest

from email_stack import Layer, Relay, start_gateway, write_config
from gateways.core.specs import load_schema
from gateways.email.spool import Spool
from servers import free_port

SCHEMA = load_schema("email")
# Every test starts (and restarts) `gateway email` processes.
pytestmark = pytest.mark.e2e


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("you@example.test", ["inbox@demo.local"],
                        f"From: you@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode())


async def test_mail_accepted_while_redis_is_down_survives_a_gateway_restart(private_redis, tmp_path):
    config, port = write_config(tmp_path, private_redis.url, ack_timeout=2)
    gateway = start_gateway(config, port)
    try:
        private_redis.stop()
        for n in range(3):
            send(port, f"while down {n}")  # 250: in the spool, not in Redis
    finally:
        assert gateway.stop() == 0, gateway.log()
    spooled = list(Spool(tmp_path / f"spool-{port}").pending())
    assert sorted(e.raw.split(b"\r\n")[1] for e in spooled) == [b"Subject: while down %d" % n for n in range(3)]
    private_redis.start()
    gateway = start_gateway(config, port)
    layer = Layer(config)
    try:
        subjects = set()
        for _ in range(3):
            message = await layer.receive("email.receive")
            assert SCHEMA.problem(message) is None
            subjects.add(message["subject"])
            await layer.send(message["reply_channel"], {"type": "email.ack", "id": message["id"]})
        assert subjects == {"while down 0", "while down 1", "while down 2"}
        assert "3 message(s) from an earlier run" in gateway.log()
        for _ in range(100):
            if not list((tmp_path / f"spool-{port}" / "new").iterdir()):
                break
            import asyncio

            await asyncio.sleep(0.1)
        assert not list((tmp_path / f"spool-{port}" / "new").iterdir()), "acknowledged mail left the spool"
    finally:
        await layer.close()
        assert gateway.stop() == 0, gateway.log()


async def test_relay_down_then_up_delivers_after_retry(redis_server, tmp_path):
    relay = Relay(free_port())  # not started yet: nothing listens on its port
    config, port = write_config(tmp_path, redis_server.url, relay=relay.url, relay_attempts=30)
    gateway = start_gateway(config, port)
    layer = Layer(config)
    try:
        await layer.send("email.send", {"type": "email.send", "id": "late", "reply_channel": "test.late",
                                        "from": "echo@demo.local", "to": "you@example.test", "subject": "Re: x",
                                        "text": "answer"})
        gateway.wait_for_log("retrying", timeout=30)
        relay.start()
        sent = await layer.receive("test.late", timeout=60)
        assert SCHEMA.problem(sent) is None
        assert sent["type"] == "email.sent" and sent["attempts"] > 1, sent
        (got,) = relay.handler.wait_for(1)
        assert got["rcpt_tos"] == ["you@example.test"] and b"answer" in got["data"]
    finally:
        relay.stop()
        await layer.close()
        assert gateway.stop() == 0, gateway.log()


async def test_relay_attempts_spent_reports_transient_failure(redis_server, tmp_path):
    config, port = write_config(tmp_path, redis_server.url, relay=f"smtp://127.0.0.1:{free_port()}",
                                relay_attempts=2)
    gateway = start_gateway(config, port)
    layer = Layer(config)
    try:
        await layer.send("email.send", {"type": "email.send", "id": "never", "reply_channel": "test.never",
                                        "from": "echo@demo.local", "to": "you@example.test", "text": "x"})
        failed = await layer.receive("test.never", timeout=60)
        assert SCHEMA.problem(failed) is None
        assert (failed["type"], failed["permanent"], failed["attempts"]) == ("email.failed", False, 2), failed
    finally:
        await layer.close()
        assert gateway.stop() == 0, gateway.log()


async def test_gateway_killed_mid_stream_loses_nothing_that_got_250(redis_server, tmp_path):
    # SIGKILL: no drain, no closing of the spool. What got a 250 is in the journal
    # and is handed off by the next gateway on the same spool.
    import asyncio
    import threading
    import time

    config, port = write_config(tmp_path, redis_server.url)
    gateway = start_gateway(config, port)
    layer = Layer(config)
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        sequence = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                    while not stop.is_set():
                        subject = f"c{number}-{sequence}"
                        sequence += 1
                        smtp.sendmail("you@example.test", ["inbox@demo.local"],
                                      f"From: you@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode())
                        with lock:
                            accepted.append(subject)  # only after the 250
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # the gateway is down: try again, as a sending MTA would

    received: dict[str, int] = {}

    async def consume() -> None:
        while True:
            message = await layer.receive("email.receive", timeout=60)
            assert SCHEMA.problem(message) is None
            received[message["subject"]] = received.get(message["subject"], 0) + 1
            await layer.send(message["reply_channel"], {"type": "email.ack", "id": message["id"]})

    clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    consumer = asyncio.create_task(consume())
    try:
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 60
        while len(accepted) < 150:
            assert time.monotonic() < deadline, f"only {len(accepted)} messages accepted"
            await asyncio.sleep(0.05)
        gateway.proc.kill()
        gateway.proc.wait()
        before_kill = len(accepted)
        gateway = start_gateway(config, port)
        while len(accepted) < before_kill + 150:
            assert time.monotonic() < deadline + 60, f"only {len(accepted)} messages accepted"
            await asyncio.sleep(0.05)
        stop.set()
        for thread in clients:
            thread.join(30)
        with lock:
            expected = set(accepted)
        deadline = time.monotonic() + 60
        while not expected <= set(received):
            assert time.monotonic() < deadline, f"lost after a 250: {sorted(expected - set(received))[:10]}"
            await asyncio.sleep(0.1)
        duplicates = sum(count - 1 for count in received.values())
        assert duplicates <= before_kill, "acknowledged mail handed again wholesale after the restart"
        assert "from an earlier run" in gateway.log(), "the restarted gateway found nothing in the spool"
    finally:
        stop.set()
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await layer.close()
        assert gateway.stop() == 0, gateway.log()
