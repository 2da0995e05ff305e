"""`python -m consumers.testing.slack_standin` as a developer runs it: a real
`gateway slack` pointed at it through slack.api_url, a message injected over
HTTP reaching the layer, and the gateway's Web API calls logged."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateways.core.config import LayerConfig
from gateways.core.layer import build_layer, close_layer
from gateways.core.specs import load_schema
from servers import PYTHON, REPO, Daemon, free_port, gateway_daemon

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from slack.stack import write_config  # noqa: E402

pytestmark = pytest.mark.e2e


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str) -> list:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def standin():
    port = free_port()
    daemon = Daemon("slack-standin", [PYTHON, "-m", "consumers.testing.slack_standin", "--listen",
                                      f"127.0.0.1:{port}"])
    try:
        daemon.wait_for_log("listening on", timeout=30)
        yield SimpleNamespace(daemon=daemon, url=f"http://127.0.0.1:{port}", app_token="xapp-standin",
                              bot_token="xoxb-standin", api_url=f"http://127.0.0.1:{port}/api/")
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_the_command_refuses_a_bad_listen_address_and_a_taken_port(standin):
    bad = subprocess.run([PYTHON, "-m", "consumers.testing.slack_standin", "--listen", "nope"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stderr
    port = standin.url.rpartition(":")[2]
    taken = subprocess.run([PYTHON, "-m", "consumers.testing.slack_standin", "--listen", f"127.0.0.1:{port}"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr


def test_a_gateway_pointed_at_the_command_gets_injected_messages(standin, redis_server, tmp_path):
    # Nothing connected yet: an injection says so instead of vanishing.
    status, body = post(f"{standin.url}/inject/message", {"channel": "C0KIT", "text": "too early"})
    assert status == 409 and "no Socket Mode connection" in body["error"]
    assert post(f"{standin.url}/inject/nonsense", {})[0] == 404
    assert post(f"{standin.url}/inject/message", {"text": "no channel"})[0] == 400

    prefix = f"s{uuid.uuid4().hex[:8]}"
    gateway = gateway_daemon("slack", write_config(tmp_path, redis_server.url, standin, prefix))
    try:
        gateway.wait_for_log("Socket Mode connected", timeout=30)
        status, body = post(f"{standin.url}/inject/message", {"channel": "C0KIT", "text": "hello gateway"})
        assert status == 200 and body["ok"], body
        message = asyncio.run(through_the_layer(redis_server.url, prefix))
        standin.daemon.wait_for_log(f"ack      {body['envelope_id']}", timeout=30)
        standin.daemon.wait_for_log('web api  chat.postMessage {"channel": "C0KIT", "text": "hi back"} -> ok',
                                    timeout=30)
    finally:
        gateway.stop()
    assert load_schema("slack").problem(message) is None
    assert (message["type"], message["channel"], message["text"]) == ("slack.message", "C0KIT", "hello gateway")
    (call,) = get(f"{standin.url}/calls?method=chat.postMessage")
    assert call["params"]["channel"] == "C0KIT" and call["params"]["text"] == "hi back" and call["status"] == 200
    assert [ack["envelope_id"] for ack in get(f"{standin.url}/acks")] == [body["envelope_id"]]


async def through_the_layer(redis_url: str, prefix: str) -> dict:
    """The injected slack.message, taken from the layer; then a slack.send put on it
    for the gateway to carry out at the stand-in."""
    layer = build_layer(LayerConfig(url=redis_url, prefix=prefix))
    try:
        message = await asyncio.wait_for(layer.receive("slack.receive"), 30)
        await layer.send("slack.send", {"type": "slack.send", "action": "post", "channel": "C0KIT",
                                        "text": "hi back"})
        return message
    finally:
        await close_layer(layer)
