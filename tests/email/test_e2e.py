"""End to end: SMTP client -> gateway -> Redis -> Django worker (the demo's
echo consumer) -> email.send -> gateway -> relay."""

from __future__ import annotations

import email
import email.policy
import smtplib
import subprocess
import threading
import time
from pathlib import Path

import pytest

from email_stack import Relay, start_gateway, write_config
from servers import PYTHON, Daemon, require_binary, runworker

pytestmark = pytest.mark.e2e


def spool_empty(directory: Path, port: int, timeout: float = 60.0) -> None:
    """Wait until every spooled message was acknowledged (its handler returned)."""
    new = directory / f"spool-{port}" / "new"
    deadline = time.monotonic() + timeout
    while any(new.iterdir()):
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for acknowledgements: {sorted(p.name for p in new.iterdir())}")
        time.sleep(0.1)


@pytest.fixture
def demo_stack(redis_server, tmp_path):
    relay = Relay().start()
    config, port = write_config(tmp_path, redis_server.url, relay=relay.url)
    gateway = start_gateway(config, port)
    worker = runworker(config, ["email.receive"])
    try:
        worker.wait_for_log("Running worker for channels")
        yield {"port": port, "relay": relay, "dir": tmp_path, "gateway": gateway, "worker": worker}
    finally:
        worker.stop()
        code = gateway.stop()
        relay.stop()
        assert code == 0, gateway.log()


def test_swaks_to_echo_is_answered_at_the_relay(demo_stack):
    swaks = require_binary("swaks", "swaks")
    port, relay = demo_stack["port"], demo_stack["relay"]
    # RFC 3834: none of these may be answered
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        base = "From: you@example.test\r\nTo: echo@demo.local\r\nSubject: {}\r\n{}\r\nplease no reply\r\n"
        client.sendmail("you@example.test", ["echo@demo.local"],
                        base.format("auto", "Auto-Submitted: auto-replied\r\n"))
        client.sendmail("you@example.test", ["echo@demo.local"], base.format("bulk", "Precedence: bulk\r\n"))
        client.sendmail("you@example.test", ["echo@demo.local"], base.format("list", "List-Id: <l.example.test>\r\n"))
        client.sendmail("", ["echo@demo.local"], base.format("bounce", ""))
        client.sendmail("you@example.test", ["other@demo.local"], base.format("not echo", ""))
    spool_empty(demo_stack["dir"], port)
    assert relay.handler.messages == []
    out = subprocess.run([swaks, "--server", f"127.0.0.1:{port}", "--to", "echo@demo.local", "--from",
                          "you@example.test", "--header", "Subject: ping", "--header",
                          "Message-Id: <ping-1@example.test>", "--body", "same body\nsecond line"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    (reply,) = relay.handler.wait_for(1, timeout=60)
    assert reply["mail_from"] == "echo@demo.local" and reply["rcpt_tos"] == ["you@example.test"]
    parsed = email.message_from_bytes(reply["data"], policy=email.policy.default)
    assert parsed["Subject"] == "Re: ping"
    assert parsed["In-Reply-To"] == "<ping-1@example.test>"
    assert parsed["References"] == "<ping-1@example.test>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed.get_content().replace("\r\n", "\n").strip() == "same body\nsecond line"
    spool_empty(demo_stack["dir"], port)
    assert len(relay.handler.messages) == 1


def test_mail_accepted_while_every_worker_is_down_is_answered_when_one_returns(redis_server, tmp_path):
    """The layer drops what nobody reads within its expiry; the gateway's
    redelivery brings the message back, and the consumer answers it once."""
    relay = Relay().start()
    config, port = write_config(tmp_path, redis_server.url, relay=relay.url, ack_timeout=1, max_attempts=50,
                                layer={"expiry": 1})
    gateway = start_gateway(config, port)
    worker = None
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("you@example.test", ["echo@demo.local"],
                            b"From: you@example.test\r\nSubject: nobody home\r\n\r\nbody\r\n")
        # wait until the first hand-offs sat unread past the layer's expiry and were handed again
        deadline = time.monotonic() + 60
        while "email_redeliveries_total" not in _metrics(gateway, tmp_path):
            assert time.monotonic() < deadline, gateway.log()
            time.sleep(0.2)
        worker = runworker(config, ["email.receive"])
        worker.wait_for_log("Running worker for channels")
        (reply,) = relay.handler.wait_for(1, timeout=60)
        assert email.message_from_bytes(reply["data"])["Subject"] == "Re: nobody home"
        spool_empty(tmp_path, port)
        assert len(relay.handler.messages) == 1
    finally:
        if worker:
            worker.stop()
        code = gateway.stop()
        relay.stop()
        assert code == 0, gateway.log()


def _metrics(gateway: Daemon, directory: Path) -> str:
    import urllib.request

    import yaml

    config = next(directory.glob("email-*.yaml"))
    listen = yaml.safe_load(config.read_text())["email"]["health"]["listen"]
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as response:
        return response.read().decode()


def test_redis_stopped_mid_stream_loses_nothing(private_redis, tmp_path):
    """Every message that got 250 reaches the consumer (its echo reaches the relay);
    the others got a 4xx. Counted, not timed."""
    relay = Relay().start()
    config, port = write_config(tmp_path, private_redis.url, relay=relay.url, django=True, ack_timeout=3,
                                max_attempts=50, relay_attempts=50)
    gateway = start_gateway(config, port)
    worker = Daemon("worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), "email.receive"],
                    env={"DEMO_DATABASE": str(tmp_path / "db.sqlite3"), "GATEWAY_CONFIG": str(config)})
    accepted: list[str] = []
    refused: list[str] = []
    total = 45
    try:
        worker.wait_for_log("Running worker for channels")

        def client() -> None:
            for n in range(total):
                subject = f"stream {n}"
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                        smtp.sendmail("you@example.test", ["echo@demo.local"],
                                      f"From: you@example.test\r\nSubject: {subject}\r\n\r\nbody {n}\r\n".encode())
                    accepted.append(subject)
                except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused) as exc:
                    code = getattr(exc, "smtp_code", 450)
                    assert 400 <= code < 500, exc
                    refused.append(subject)
                if n == 15:
                    private_redis.stop()
                if n == 30:
                    # keep Redis down until the gateway has felt it, with accepted mail pending
                    gateway.wait_for_log("channel layer unavailable", timeout=60)
                    private_redis.start()

        thread = threading.Thread(target=client)
        thread.start()
        thread.join(300)
        assert not thread.is_alive()
        assert len(accepted) + len(refused) == total
        replies = relay.handler.wait_for(len(accepted), timeout=180)
        answered = set()
        for reply in replies:
            subject = email.message_from_bytes(reply["data"], policy=email.policy.default)["Subject"]
            answered.add(subject.removeprefix("Re: "))
        spool_empty(tmp_path, port, timeout=180)
        replies = relay.handler.messages
        answered = {email.message_from_bytes(r["data"], policy=email.policy.default)["Subject"].removeprefix("Re: ")
                    for r in replies}
        assert set(accepted) <= answered, f"lost: {sorted(set(accepted) - answered)}"
        assert answered <= set(accepted)
        print(f"accepted {len(accepted)}, refused {len(refused)}, replies {len(replies)} "
              f"({len(replies) - len(answered)} duplicates after the outage)")
    finally:
        worker.stop()
        code = gateway.stop()
        relay.stop()
        assert code == 0, gateway.log()
