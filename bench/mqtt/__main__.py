"""MQTT benchmark: the gateway path against a plain aiomqtt subscriber and mqttasgi.

    python -m bench.mqtt [--messages 3000] [--topics 8] [--round-trips 300]

Measures, in one run on this machine, against one private Mosquitto and Redis:

- inbound messages/s at QoS 0 and QoS 1: ``mosquitto_pub`` on ``--topics``
  topics -> broker -> system -> consumer that counts, until the consumer has
  seen every topic's ``END``. Systems: a plain aiomqtt subscriber (the
  ceiling: no layer, no consumer process), mqttasgi (broker -> mqttasgi ->
  in-process consumer), the gateway into the layer with the benchmark
  process reading the channel (the gateway's own ceiling), the gateway ->
  Redis -> ``runworker`` consumer (the stock Channels path), and the gateway
  -> Redis -> ``gateway worker`` consumer (the project's fast path: batched
  layer, topics handled concurrently, each in order);
- publish round trip p50/p99: a consumer-side ``mqtt.publish`` on
  ``mqtt.send`` -> gateway -> broker -> gateway -> layer -> back to the
  benchmark, against the raw channel-layer round trip (send to a channel, an
  echo process answers on a reply channel);

and prints the ratios the issue's targets are stated in. Messages lost are
counted, never hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt
import yaml

from bench.common import PYTHON, REPO, describe, free_port, print_rows, redis_server, start, stop, wait_for_port
from gateways.core.config import load_config
from gateways.core.layer import build_layer, close_layer

PAYLOAD = "x" * 32


def mosquitto() -> tuple[subprocess.Popen, int]:
    """A private Mosquitto that queues without a practical bound (nothing lost at the broker)."""
    binary = shutil.which("mosquitto")
    if binary is None:
        raise SystemExit("mosquitto not found: apt-get install mosquitto mosquitto-clients")
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="bench-mosquitto-"))
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                    "max_inflight_messages 100\n")
    proc = start([binary, "-c", str(conf)], cwd=directory)
    wait_for_port(port)
    return proc, port


def write_config(directory: Path, redis_url: str, port: int, qos: int) -> Path:
    config = {
        "layer": {"url": redis_url, "prefix": f"b{uuid.uuid4().hex[:6]}", "capacity": 200000, "expiry": 600},
        "log": {"level": "WARNING"},
        "django": {"settings": "bench.mqtt.settings", "path": [str(REPO), str(REPO / "example")]},
        "mqtt": {
            "broker": f"mqtt://127.0.0.1:{port}",
            "client_id": f"bench-gateway-{uuid.uuid4().hex[:6]}",
            "session_expiry": 0,
            "inflight": 1000,
            "subscriptions": [
                {"filter": "bench/in/#", "qos": qos, "channel": "mqtt.bench"},
                {"filter": "bench/rt/#", "qos": 1, "channel": "mqtt.rt"},
            ],
        },
    }
    path = directory / f"bench-mqtt-{qos}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Done:
    """Listens on bench/done and hands each payload to whoever waits."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"bench-done-{uuid.uuid4().hex[:6]}") as c:
            await c.subscribe("bench/done", 1)
            self.ready.set()
            async for message in c.messages:
                await self.queue.put(message.payload)

    async def __aenter__(self) -> "Done":
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self.run())
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def next(self, timeout: float) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def count(self, timeout: float) -> bytes:
        """The next answer that is a count (late pongs of the readiness check are skipped)."""
        deadline = time.monotonic() + timeout
        while (answer := await self.next(max(0.01, deadline - time.monotonic()))) == b"pong":
            pass
        return answer


async def publish_lines(port: int, topic: str, lines: list[str], qos: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos), "-l",
        stdin=asyncio.subprocess.PIPE)
    await proc.communicate(("\n".join(lines) + "\n").encode())


async def wait_ready(port: int, done: Done, timeout: float = 60) -> None:
    """PING until the system answers pong: it is subscribed and its consumer runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await publish_lines(port, "bench/in/0", ["PING"], 1)
        try:
            while (await done.next(0.5)) != b"pong":
                pass
            # Drain pongs of earlier pings.
            while True:
                await done.next(0.3)
        except asyncio.TimeoutError:
            if done.queue.empty() and time.monotonic() < deadline:
                return
    raise SystemExit("system never answered PING")


async def inbound_run(port: int, done: Done, messages: int, topics: int, qos: int) -> tuple[int, float]:
    """Publish ``messages`` over ``topics`` and wait for the consumer's count; return (count, seconds)."""
    per_topic = messages // topics
    began = time.perf_counter()
    await asyncio.gather(*(publish_lines(port, f"bench/in/{k}", [PAYLOAD] * per_topic + [f"END:{topics}"], qos)
                           for k in range(topics)))
    try:
        count = int(await done.count(60 + messages / 100))
        return count, time.perf_counter() - began
    except asyncio.TimeoutError:
        pass
    # An END was dropped (QoS 0 under overload): ask for the count; time up to the ask.
    seconds = time.perf_counter() - began
    print(f"  (no END after {seconds:.0f} s: asking for the count)", flush=True)
    await publish_lines(port, "bench/in/0", ["COUNT"], 1)
    return int(await done.count(60)), seconds


async def measure_inbound(name: str, port: int, messages: int, topics: int, qos: int) -> dict:
    async with Done(port) as done:
        await wait_ready(port, done)
        count, seconds = await inbound_run(port, done, messages, topics, qos)
    row = describe(name, count, seconds, [])
    row["lost"] = messages // topics * topics - count
    return row


async def measure_gateway_into_layer(config: Path, port: int, messages: int, topics: int, qos: int) -> dict:
    """The gateway into the layer, read by this process (no runworker)."""
    layer = build_layer(load_config(config).layer)
    per_topic = messages // topics
    # Readiness: one message through.
    deadline = time.monotonic() + 60
    while True:
        await publish_lines(port, "bench/in/0", ["PING"], 1)
        try:
            await asyncio.wait_for(layer.receive("mqtt.bench"), 1)
            break
        except asyncio.TimeoutError:
            if time.monotonic() > deadline:
                raise SystemExit("gateway never delivered")
    while True:  # drain stray pings
        try:
            await asyncio.wait_for(layer.receive("mqtt.bench"), 0.5)
        except asyncio.TimeoutError:
            break
    ended = count = 0
    began = time.perf_counter()
    publishing = asyncio.gather(*(publish_lines(port, f"bench/in/{k}", [PAYLOAD] * per_topic + [f"END:{topics}"],
                                                qos) for k in range(topics)))
    last = began
    while ended < topics:
        try:
            message = await asyncio.wait_for(layer.receive("mqtt.bench"), 10)
        except asyncio.TimeoutError:
            break  # an END was dropped (QoS 0 under overload): count what came
        last = time.perf_counter()
        if message["payload"].startswith(b"END:"):
            ended += 1
        else:
            count += 1
    seconds = last - began
    await publishing
    await close_layer(layer)
    row = describe("gateway -> layer (read by the bench)", count, seconds, [])
    row["lost"] = per_topic * topics - count
    return row


async def round_trips(config: Path, count: int, qos: int) -> tuple[dict, dict]:
    """Publish round trip through the gateway and broker, and the raw layer round trip."""
    layer = build_layer(load_config(config).layer)
    reply = await layer.new_channel()
    gateway_latencies, layer_latencies = [], []
    for n in range(count + 20):
        started = time.perf_counter()
        await layer.send("mqtt.send", {"type": "mqtt.publish", "topic": "bench/rt/1", "payload": b"%d" % n,
                                       "qos": qos})
        while (await asyncio.wait_for(layer.receive("mqtt.rt"), 30))["payload"] != b"%d" % n:
            pass
        if n >= 20:  # warm-up excluded
            gateway_latencies.append(time.perf_counter() - started)
    for n in range(count + 20):
        started = time.perf_counter()
        await layer.send("bench.echo", {"type": "bench.ping", "payload": b"%d" % n, "reply_channel": reply})
        await asyncio.wait_for(layer.receive(reply), 30)
        if n >= 20:
            layer_latencies.append(time.perf_counter() - started)
    await close_layer(layer)
    return (describe(f"publish round trip via gateway+broker (QoS {qos})", count, sum(gateway_latencies),
                     gateway_latencies),
            describe("raw channel-layer round trip", count, sum(layer_latencies), layer_latencies))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a (nothing arrived)"


def env_for(config: Path) -> dict[str, str]:
    return {"GATEWAY_CONFIG": str(config), "DJANGO_SETTINGS_MODULE": "bench.mqtt.settings",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "example"), os.environ.get("PYTHONPATH", "")])}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages per inbound run")
    parser.add_argument("--topics", type=int, default=8, help="topics they are spread over")
    parser.add_argument("--round-trips", type=int, default=300, help="publish round trips measured")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    redis, redis_url = redis_server()
    broker, port = mosquitto()
    results: dict[int, dict[str, dict]] = {}
    rt_rows: list[dict] = []
    try:
        for qos in (0, 1):
            rows: dict[str, dict] = {}
            config = write_config(workdir, redis_url, port, qos)
            env = env_for(config)

            plain = start([PYTHON, "-m", "bench.mqtt.plain", str(port), str(qos)], env=env)
            try:
                rows["plain"] = await measure_inbound("plain aiomqtt subscriber (ceiling)", port, args.messages,
                                                      args.topics, qos)
            finally:
                stop(plain)

            mqttasgi = start([PYTHON, "-m", "mqttasgi.cli", "-H", "127.0.0.1", "-p", str(port), "-i",
                              f"bench-mqttasgi-{qos}", f"bench.mqtt.apps:mqttasgi_qos{qos}"], env=env)
            try:
                rows["mqttasgi"] = await measure_inbound("mqttasgi (in-process consumer)", port, args.messages,
                                                         args.topics, qos)
            finally:
                stop(mqttasgi)

            gateway = start([PYTHON, "-m", "gateways", "mqtt", "--config", str(config)], env=env)
            try:
                rows["layer"] = await measure_gateway_into_layer(config, port, args.messages, args.topics, qos)
                worker = start([PYTHON, "-m", "django", "runworker", "mqtt.bench"], env=env)
                try:
                    rows["worker"] = await measure_inbound("gateway -> Redis -> runworker consumer", port,
                                                           args.messages, args.topics, qos)
                finally:
                    stop(worker)
                fast = start([PYTHON, "-m", "gateways", "worker", "--config", str(config), "mqtt.bench"], env=env)
                try:
                    rows["fast"] = await measure_inbound("gateway -> Redis -> gateway worker consumer", port,
                                                         args.messages, args.topics, qos)
                finally:
                    stop(fast)
                if qos == 1:
                    echo = start([PYTHON, "-m", "bench.mqtt.layer_echo", "bench.echo"], env=env)
                    try:
                        for rt_qos in (0, 1):
                            gateway_rt, layer_rt = await round_trips(config, args.round_trips, rt_qos)
                            rt_rows.extend([gateway_rt, layer_rt] if rt_qos == 0 else [gateway_rt])
                    finally:
                        stop(echo)
            finally:
                stop(gateway)
            results[qos] = rows
    finally:
        stop(broker)
        stop(redis)

    print(f"\nMQTT inbound, {args.messages} messages of {len(PAYLOAD)} bytes over {args.topics} topics "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    for qos, rows in results.items():
        print_rows(f"QoS {qos}: broker -> consumer", list(rows.values()))
        print("  lost: " + ", ".join(f"{key}={r['lost']}" for key, r in rows.items()))
        plain, asgi = rows["plain"]["rate"], rows["mqttasgi"]["rate"]
        for key, label in (("layer", "gateway->layer"), ("worker", "gateway->runworker"),
                           ("fast", "gateway->gateway worker")):
            print(f"  ratios: {label} / mqttasgi = {ratio(rows[key]['rate'], asgi)}, "
                  f"{label} / plain aiomqtt = {ratio(rows[key]['rate'], plain)}")
    print_rows("Publish round trip (closed loop, one at a time)", rt_rows)
    base = rt_rows[1]["p50"]
    for row in (rt_rows[0], rt_rows[2]):
        print(f"  {row['name']}: p50 {row['p50'] - base:+.2f} ms vs raw layer round trip "
              f"(p99 {row['p99'] - rt_rows[1]['p99']:+.2f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
