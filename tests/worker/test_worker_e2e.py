"""End to end: a real `gateway worker` process on real Redis.

A stock channels_redis layer in the test plays the Django web process (or a
gateway): it sends work to the worker and reads the consumers' answers, so
these tests also prove the worker's batched layer and stock channels_redis
interoperate across processes.
"""

from __future__ import annotations

import asyncio
import collections
import re
import signal
import uuid
from pathlib import Path

import pytest
import websockets
import yaml
from channels_redis.core import RedisChannelLayer

from servers import PYTHON, REPO, Daemon, free_port, gateway_daemon, runworker, wait_for_group, wait_for_port

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parent / "project"
ORIGIN = "http://good.example"


def write_config(directory: Path, redis_url: str, concurrency: int = 64, worker: dict | None = None,
                 **django: object) -> tuple[Path, str, int]:
    """A YAML with the layer, the test project (``django`` adds keys to its
    section), ``worker`` as the worker section and a WebSocket gateway; (path, prefix, ws port)."""
    prefix = f"wk{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = {
        "layer": {"url": redis_url, "prefix": prefix},
        "django": {"settings": "wktest.settings", "path": [str(PROJECT), str(REPO / "example")],
                   "concurrency": concurrency, **django},
        "websocket": {"listen": f"127.0.0.1:{port}", "allowed_origins": [ORIGIN], "grace_period": 5,
                      "routes": [{"path": "^/echo/$", "channel": "websocket.echo"}]},
        **({"worker": worker} if worker else {}),
    }
    path = directory / f"worker-{prefix}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, prefix, port


def start_worker(config: Path, channels: list[str], directory: Path) -> Daemon:
    """`python -m gateways worker --config FILE channels...`, waited for."""
    worker = Daemon("gateway-worker", [PYTHON, "-m", "gateways", "worker", "--config", str(config), *channels],
                    env={"DEMO_DATABASE": str(directory / "db.sqlite3")})
    worker.wait_for_log("Running worker for channels", timeout=30)
    return worker


@pytest.fixture
def setup(redis_server, tmp_path):
    config, prefix, port = write_config(tmp_path, redis_server.url)
    stock = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix, capacity=10000)
    procs: list[Daemon] = []
    yield {"config": config, "stock": stock, "port": port, "dir": tmp_path, "procs": procs}
    for proc in procs:
        proc.stop()


async def collect(layer: RedisChannelLayer, channel: str, count: int, timeout: float = 30) -> list[dict]:
    return [await asyncio.wait_for(layer.receive(channel), timeout) for _ in range(count)]


async def test_sigterm_drains_every_message_taken_and_leaves_the_rest_in_redis(setup):
    stock = setup["stock"]
    worker = start_worker(setup["config"], ["worker.slow"], setup["dir"])
    setup["procs"].append(worker)
    for n in range(30):
        for conv in range(10):
            await stock.send("worker.slow", {"type": "work", "conv": f"c{conv}", "n": n,
                                             "reply_channel": "results", "delay": 0.02})
    first = await asyncio.wait_for(stock.receive("results"), 30)
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.proc.wait, 40) == 0
    done = [first]
    while True:  # every answer the worker sent before exiting
        try:
            done.append(await asyncio.wait_for(stock.receive("results"), 1.5))
        except asyncio.TimeoutError:
            break
    left = []
    while True:  # what it never took stays in Redis for the next worker
        try:
            left.append(await asyncio.wait_for(stock.receive("worker.slow"), 1.5))
        except asyncio.TimeoutError:
            break
    handled = [(m["conv"], m["n"]) for m in done]
    waiting = [(m["conv"], m["n"]) for m in left]
    assert len(handled) == len(set(handled)), "a message was handled twice"
    assert sorted(handled + waiting) == sorted((f"c{c}", n) for c in range(10) for n in range(30))
    # The signal came while work was in flight (30 messages of 20 ms per conversation),
    # and that work was finished, not dropped.
    drained = int(re.search(r"draining (\d+) message", worker.log()).group(1))
    assert drained > 0 and len(handled) > drained
    per_conv = collections.defaultdict(list)
    for conv, n in handled:
        per_conv[conv].append(n)
    assert all(seq == sorted(seq) for seq in per_conv.values()), per_conv
    assert "worker stopped" in worker.log()
    await stock.close_pools()


async def test_a_raising_consumer_is_retried_then_given_up_and_isolated(redis_server, setup):
    """Each failing message is tried twice, then given up; its conversation's
    later messages wait for that and keep their order, the other conversation
    never notices."""
    config, prefix, _port = write_config(setup["dir"], redis_server.url,
                                         worker={"retry": {"attempts": 2, "initial_delay": 0.01, "max_delay": 0.02}})
    stock = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix, capacity=10000)
    worker = start_worker(config, ["worker.fail"], setup["dir"])
    setup["procs"].append(worker)
    for n in range(10):
        for conv in ("a", "b"):
            await stock.send("worker.fail", {"type": "work", "conv": conv, "n": n, "reply_channel": "answers",
                                             "boom": conv == "a" and n in (3, 4)})
    answers = await collect(stock, "answers", 18)
    seq = collections.defaultdict(list)
    for message in answers:
        seq[message["conv"]].append(message["n"])
    assert seq == {"a": [0, 1, 2, 5, 6, 7, 8, 9], "b": list(range(10))}
    log = worker.log()
    assert log.count("consumer on worker.fail failed handling work id=? reply_channel=answers (conversation a), "
                     "attempt 1/2: RuntimeError: boom in a (on purpose); retrying in ") == 2
    assert log.count("consumer on worker.fail gave up work id=? reply_channel=answers (conversation a) "
                     "after 2 attempt(s); dead-lettered as ") == 2
    assert worker.proc.poll() is None
    assert worker.stop() == 0
    await stock.close_pools()


async def test_websocket_echo_through_gateway_worker_keeps_each_connection_in_order(setup):
    port = setup["port"]
    gateway = gateway_daemon("websocket", setup["config"], env={"DEMO_DATABASE": str(setup["dir"] / "g.db")})
    setup["procs"].append(gateway)
    wait_for_port(port, timeout=30)
    worker = start_worker(setup["config"], [], setup["dir"])  # the channels the config routes to
    setup["procs"].append(worker)
    assert "websocket.echo" in worker.log()

    async def client(i: int) -> list[str]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo/", origin=ORIGIN, open_timeout=20) as ws:
            for j in range(40):
                await ws.send(f"{i}:{j}")
            return [await asyncio.wait_for(ws.recv(), 30) for _ in range(40)]

    replies = await asyncio.gather(*(client(i) for i in range(25)))
    for i, got in enumerate(replies):
        assert got == [f"{i}:{j}" for j in range(40)]


@pytest.mark.parametrize("gateway_batched,worker", [(True, "runworker"), (False, "gateway worker")])
async def test_a_stock_layer_process_and_a_batched_one_serve_websocket_together(redis_server, tmp_path,
                                                                                 gateway_batched, worker):
    """Across processes: the gateway on one layer class, the Django worker on the
    other (stock channels_redis under runworker, or the batched layer under
    gateway worker), one Redis and prefix: echo and a chat room (groups) work."""
    config, prefix, port = write_config(tmp_path, redis_server.url)
    data = yaml.safe_load(config.read_text())
    data["websocket"]["routes"].append({"path": "^/chat/(?P<room>[a-z]+)/$", "channel": "websocket.chat"})
    gateway_config, worker_config = tmp_path / "gateway.yaml", tmp_path / "worker.yaml"
    gateway_config.write_text(yaml.safe_dump({**data, "layer": {**data["layer"], "batched": gateway_batched}}))
    worker_config.write_text(yaml.safe_dump({**data, "layer": {**data["layer"], "batched": not gateway_batched}}))
    procs = [gateway_daemon("websocket", gateway_config)]
    try:
        wait_for_port(port, timeout=30)
        if worker == "runworker":
            proc = runworker(worker_config, ["websocket.echo", "websocket.chat"],
                             settings="wktest.settings", pythonpath=[PROJECT])
        else:
            proc = start_worker(worker_config, ["websocket.echo", "websocket.chat"], tmp_path)
        procs.append(proc)
        proc.wait_for_log("Running worker for channels", timeout=30)
        url = f"ws://127.0.0.1:{port}"
        async with websockets.connect(f"{url}/echo/", origin=ORIGIN, open_timeout=20) as ws:
            for i in range(20):
                await ws.send(f"m{i}")
            assert [await asyncio.wait_for(ws.recv(), 20) for _ in range(20)] == [f"m{i}" for i in range(20)]
            await ws.send(b"\x00\xff")
            assert await asyncio.wait_for(ws.recv(), 20) == b"\x00\xff"
        async with websockets.connect(f"{url}/chat/lobby/", origin=ORIGIN, open_timeout=20) as alice, \
                websockets.connect(f"{url}/chat/lobby/", origin=ORIGIN, open_timeout=20) as bob:
            await wait_for_group(redis_server.url, prefix, "chat.lobby", 2)
            await alice.send("hello")
            assert await asyncio.wait_for(bob.recv(), 20) == "hello"
            assert await asyncio.wait_for(alice.recv(), 20) == "hello"
    finally:
        for proc in procs:
            proc.stop()
