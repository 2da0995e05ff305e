"""A consumer that fails does not lose the message: `gateway worker` retries it
with backoff, holding its conversation, then dead-letters it.

Real processes: redis-server, Mosquitto and `gateway mqtt`, the email gateway
fed by smtplib, `gateway worker` running the test project's consumers
(tests/worker/project/wktest/consumers.py). Each consumer reports every
attempt on the layer channel ``retry.attempts``, so the test counts attempts
across processes. The retry delays are tiny (``RETRY``) so that the tests
spend their time on the mechanism, not on waiting.
"""

from __future__ import annotations

import asyncio
import collections
import smtplib
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateways.core.config import load_config
from gateways.core.deadletters import DeadLetterStore
from gateways.core.layer import build_layer
from servers import PYTHON, REPO, Daemon, async_wait_until, free_port, gateway_daemon, listening_gateway

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mqtt"))
from mqtt_stack import mosquitto_pub, wait_for_count  # noqa: E402

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parent / "project"
#: The tests' retry policy: three tries, a few hundredths of a second apart.
RETRY = {"attempts": 3, "initial_delay": 0.02, "max_delay": 0.1}


def write_config(directory: Path, redis_url: str, **sections: Any) -> Path:
    """A YAML with the layer, the test project, ``worker.retry`` = RETRY and ``sections``."""
    config = {
        "layer": {"url": redis_url, "prefix": f"rt{uuid.uuid4().hex[:8]}", "expiry": 600},
        "django": {"settings": "wktest.settings", "path": [str(PROJECT), str(REPO / "example")]},
        "worker": {"retry": RETRY},
        **sections,
    }
    path = directory / f"retries-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_worker(config: Path, channels: list[str], directory: Path) -> Daemon:
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), *channels],
                    env={"DEMO_DATABASE": str(directory / "db.sqlite3")})
    worker.wait_for_log("Running worker for channels", timeout=60)
    return worker


class Stack:
    """The processes a test started and the layer it reads (stopped in teardown)."""

    def __init__(self, directory: Path, redis_url: str) -> None:
        self.dir = directory
        self.redis_url = redis_url
        self.procs: list[Daemon] = []
        self.config: Path | None = None
        self.layer: Any = None
        self.store: DeadLetterStore | None = None

    def configure(self, **sections: Any) -> Path:
        self.config = write_config(self.dir, self.redis_url, **sections)
        loaded = load_config(self.config)
        self.layer = build_layer(loaded.layer)
        self.store = DeadLetterStore.from_config(loaded)
        return self.config

    def worker(self, channels: list[str]) -> Daemon:
        assert self.config is not None
        worker = start_worker(self.config, channels, self.dir)
        self.procs.append(worker)
        return worker

    async def collect(self, channel: str, count: int, timeout: float = 60) -> list[dict]:
        return [await asyncio.wait_for(self.layer.receive(channel), timeout) for _ in range(count)]

    async def attempts(self, until, timeout: float = 60) -> collections.Counter:
        """Attempts per key from ``retry.attempts`` until ``until(counter)`` holds."""
        seen: collections.Counter = collections.Counter()
        while not until(seen):
            message = await asyncio.wait_for(self.layer.receive("retry.attempts"), timeout)
            seen[message["key"]] += 1
        return seen

    async def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.store is not None:
            await self.store.close()
        if self.layer is not None:
            await self.layer.close_pools()


@pytest.fixture
async def stack(tmp_path, redis_server):
    stack = Stack(tmp_path, redis_server.url)
    yield stack
    await stack.close()


# --------------------------------------------------------------------------
# MQTT: the consumer fails the first attempt at each of 20 QoS 1 messages.


async def start_mqtt(stack: Stack, broker: Any, **worker: Any) -> Daemon:
    stack.configure(mqtt={"broker": broker.url, "client_id": f"rt-{uuid.uuid4().hex[:8]}", "grace_period": 5,
                          "reconnect_max": 1, "subscriptions": [{"filter": "flaky/#", "qos": 1,
                                                                 "channel": "mqtt.flaky"}]},
                    **({"worker": worker} if worker else {}))
    worker_daemon = stack.worker(["mqtt.flaky"])
    gateway = gateway_daemon("mqtt", stack.config)
    stack.procs.append(gateway)
    wait_for_count(gateway, "subscribed to", 1)
    return worker_daemon


async def test_an_mqtt_consumer_failing_each_first_attempt_handles_all_20_messages(stack, mosquitto):
    worker = await start_mqtt(stack, mosquitto)
    sent = [f"reading {n}" for n in range(20)]
    await asyncio.to_thread(mosquitto_pub, mosquitto.port, "flaky/kitchen", b"", 1, lines=sent)

    handled = await stack.collect("retry.handled", 20)
    assert [m["payload"] for m in handled] == sent  # all of them, in the topic's order
    log = worker.log()
    assert log.count("attempt 1/3: RuntimeError: first attempt at flaky/kitchen fails (on purpose); "
                     "retrying in ") == 20
    assert "topic=flaky/kitchen" in log
    assert await stack.store.list(channel="mqtt.flaky") == []


async def test_without_retries_each_failed_mqtt_message_is_a_dead_letter(stack, mosquitto):
    """``attempts: 1`` is what the worker did before it retried: each first
    attempt fails and none is handled, but none is lost either."""
    worker = await start_mqtt(stack, mosquitto, retry={"attempts": 1})
    sent = [f"reading {n}" for n in range(20)]
    await asyncio.to_thread(mosquitto_pub, mosquitto.port, "flaky/kitchen", b"", 1, lines=sent)
    await stack.attempts(lambda counter: len(counter) == 20)
    entries: list = []
    for _ in range(400):
        entries = await stack.store.list(channel="mqtt.flaky")
        if len(entries) == 20:
            break
        await asyncio.sleep(0.05)
    assert sorted(bytes(e.message["payload"]).decode() for e in entries) == sorted(sent), worker.log()
    assert {(e.protocol, e.attempts) for e in entries} == {("mqtt", 1)}
    assert await nothing_within(stack.layer, "retry.handled", 0.1)


# --------------------------------------------------------------------------
# Order: a retrying message holds its conversation; the others go on.


@pytest.mark.parametrize("channel", ["retry.gateway", "retry.stock"])
async def test_a_retrying_message_holds_its_conversation_and_others_go_on(stack, channel):
    """``hold`` 0 fails until conversation ``go`` handled its last message:
    only if ``go`` progresses while ``hold`` retries does ``hold`` ever succeed."""
    stack.configure(worker={"retry": {"attempts": 1000, "initial_delay": 0.01, "max_delay": 0.05}})
    stack.worker([channel])
    for n in range(10):
        await stack.layer.send(channel, {"type": "work", "conv": "hold", "n": n, "reply_channel": "answers",
                                         **({"until": "go done"} if n == 0 else {})})
        await stack.layer.send(channel, {"type": "work", "conv": "go", "n": n, "reply_channel": "answers",
                                         **({"release": "go done"} if n == 9 else {})})
    answers = [(m["conv"], m["n"]) for m in await stack.collect("answers", 20)]
    assert [n for conv, n in answers if conv == "hold"] == list(range(10))
    assert [n for conv, n in answers if conv == "go"] == list(range(10))
    assert answers.index(("go", 9)) < answers.index(("hold", 0))  # go went on while hold retried


# --------------------------------------------------------------------------
# Giving up: PermanentFailure at once, other failures after the last attempt.


@pytest.mark.parametrize("channel", ["retry.gateway", "retry.stock"])
async def test_permanent_failure_goes_straight_to_the_dead_letters(stack, channel):
    stack.configure()
    worker = stack.worker([channel])
    await stack.layer.send(channel, {"type": "work", "id": "w-perm", "conv": "c", "n": 0, "permanent": True,
                                     "reply_channel": "answers"})
    await stack.layer.send(channel, {"type": "work", "id": "w-next", "conv": "c", "n": 1,
                                     "reply_channel": "answers"})
    assert [m["n"] for m in await stack.collect("answers", 1)] == [1]  # the conversation went on
    (entry,) = await stack.store.list(channel=channel)
    assert (entry.message_id, entry.attempts, entry.protocol, entry.direction) == ("w-perm", 1, "channel", "inbound")
    assert entry.message["permanent"] is True
    assert entry.error_line == "PermanentFailure: c-0 can never succeed (on purpose)"
    assert "Traceback (most recent call last)" in entry.error and "handle_work" in entry.error
    assert entry.first_failure <= entry.last_failure
    log = worker.log()
    assert f"after a PermanentFailure; dead-lettered as {entry.id}" in log
    assert "attempt 1/" not in log  # no retry was made


async def test_the_last_failed_attempt_dead_letters_with_the_traceback(stack):
    stack.configure(worker={"retry": RETRY, "channels": {"retry.gateway": {"retry": {"attempts": 4}}}})
    worker = stack.worker(["retry.gateway"])
    await stack.layer.send("retry.gateway", {"type": "work", "id": "w-always", "conv": "c", "n": 0,
                                             "always": True, "reply_channel": "answers"})
    seen = await stack.attempts(lambda counter: counter["c-0"] == 4)
    assert seen == {"c-0": 4}
    entry = None
    for _ in range(200):
        entries = await stack.store.list(channel="retry.gateway")
        if entries:
            (entry,) = entries
            break
        await asyncio.sleep(0.05)
    assert entry is not None, worker.log()
    assert entry.attempts == 4 and "RuntimeError: c-0 fails every time (on purpose)" in entry.error
    # The give-up line is written once the store took the entry: wait for it, not for the entry.
    gave_up = f"after 4 attempt(s); dead-lettered as {entry.id}"
    await async_wait_until(lambda: gave_up in worker.log(), 10, "the give-up log line")
    log = worker.log()
    for n in (1, 2, 3):
        assert f"work id=w-always reply_channel=answers (conversation c), attempt {n}/4: RuntimeError: c-0 fails every time" in log
    assert "attempt 4/4" not in log
    assert f"after 4 attempt(s); dead-lettered as {entry.id}" in log
    assert "Traceback (most recent call last)" in log.split(f"dead-lettered as {entry.id}")[1]


# --------------------------------------------------------------------------
# Email: the gateway's redelivery until email.ack and the worker's retries.


def send_mail(port: int, subject: str, fails: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("you@example.test", ["failing@demo.local"],
                        f"From: you@example.test\r\nTo: failing@demo.local\r\nSubject: {subject}\r\n"
                        f"X-Fails: {fails}\r\n\r\nbody\r\n")


def email_section(directory: Path, ack_timeout: float) -> dict[str, Any]:
    return {"listen": f"127.0.0.1:{free_port()}", "domains": ["demo.local"], "relay": "file://maildir",
            "spool": str(directory / f"spool-{uuid.uuid4().hex[:6]}"), "hostname": "gw.test", "grace_period": 5,
            "health": {"listen": f"127.0.0.1:{free_port()}"}, "ack_timeout": ack_timeout, "max_attempts": 50,
            "routes": [{"address": "failing@demo.local", "channel": "email.failing"}]}


async def start_email(stack: Stack, retry: dict[str, Any], ack_timeout: float) -> tuple[str, Daemon, int]:
    """The gateway and the worker; (the gateway's health address, the worker, the SMTP port)."""
    section = email_section(stack.dir, ack_timeout)
    stack.configure(email=section, worker={"retry": retry})
    worker = stack.worker(["email.failing"])
    port = int(section["listen"].rpartition(":")[2])
    gateway = listening_gateway("email", stack.config, port)
    stack.procs.append(gateway)
    return section["health"]["listen"], worker, port


def metric(health: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{health}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def acknowledged(health: str, count: int) -> None:
    """Wait until the gateway counted ``count`` acknowledged messages."""
    for _ in range(600):
        if await asyncio.to_thread(metric, health, "gateway_email_acked_total") >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway got no email.ack")


async def test_email_retried_past_its_ack_timeout_is_handled_once(stack):
    """The gateway hands the mail again every 0.2 s while the worker retries it
    (about 1.5 s): the redeliveries are dropped as in flight, the mail is handled
    once and acknowledged, and the gateway stops handing it."""
    health, worker, port = await start_email(
        stack, {"attempts": 5, "initial_delay": 0.4, "max_delay": 0.4}, ack_timeout=0.2)
    await asyncio.to_thread(send_mail, port, "flaky", "3")
    (handled,) = await stack.collect("retry.handled", 1)
    assert handled["subject"] == "flaky"
    seen = await stack.attempts(lambda counter: counter[handled["id"]] == 4)
    assert seen == {handled["id"]: 4}  # three failures, one success: each attempt ran once
    assert "is in flight here already (being handled or retried); dropping this redelivery" in worker.log()
    # Acknowledged: the gateway forgets it; what it handed meanwhile is dropped,
    # so no attempt follows within a few of its 0.2 s redelivery periods.
    await acknowledged(health, 1)
    assert await nothing_within(stack.layer, "retry.attempts", 1.0)
    assert await nothing_within(stack.layer, "retry.handled", 0.1)


async def test_email_dead_lettered_is_acknowledged_and_never_handled_again(stack):
    health, worker, port = await start_email(
        stack, {"attempts": 3, "initial_delay": 0.3, "max_delay": 0.3}, ack_timeout=0.2)
    await asyncio.to_thread(send_mail, port, "hopeless", "always")
    seen = await stack.attempts(lambda counter: sum(counter.values()) == 3)
    (mail_id,) = seen
    entry = None
    for _ in range(200):
        entries = await stack.store.list(channel="email.failing")
        if entries:
            (entry,) = entries
            break
        await asyncio.sleep(0.05)
    assert entry is not None, worker.log()
    assert (entry.protocol, entry.message_id, entry.attempts) == ("email", mail_id, 3)
    assert entry.message["subject"] == "hopeless"
    # The worker acknowledged it: the gateway, which handed it every 0.2 s, forgets it.
    await acknowledged(health, 1)
    assert await nothing_within(stack.layer, "retry.attempts", 1.0)
    assert await nothing_within(stack.layer, "retry.handled", 0.1)
    assert f"dead-lettered as {entry.id}" in worker.log()
    # An operator's replay carries the stored message: the worker tries it again.
    replay = await asyncio.to_thread(subprocess.run, [PYTHON, "-m", "gateways", "dead-letters", "retry",
                                                      "--config", str(stack.config), entry.id],
                                     capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert await stack.attempts(lambda counter: sum(counter.values()) == 3) == {mail_id: 3}


async def nothing_within(layer: Any, channel: str, wait: float) -> bool:
    try:
        extra = await asyncio.wait_for(layer.receive(channel), wait)
    except asyncio.TimeoutError:
        return True
    raise AssertionError(f"{channel}: unexpected {extra!r}")


async def test_a_stopping_worker_dead_letters_what_still_waits_for_a_retry(stack):
    """SIGTERM while a message fails again and again: the worker drains for its
    grace period, then dead-letters the message instead of dropping it."""
    stack.configure(worker={"retry": {"attempts": 100000, "initial_delay": 0.05, "max_delay": 0.1}})
    worker = stack.worker(["retry.gateway"])
    await stack.layer.send("retry.gateway", {"type": "work", "id": "w-stop", "conv": "c", "n": 0, "always": True,
                                             "reply_channel": "answers"})
    await stack.attempts(lambda counter: counter["c-0"] >= 2)
    assert await asyncio.to_thread(worker.stop, 60) == 0
    (entry,) = await stack.store.list(channel="retry.gateway")
    assert entry.message_id == "w-stop" and entry.attempts >= 2
    assert "(1 of them being retried: dead-lettered)" in worker.log()
