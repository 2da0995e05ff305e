"""The metrics registry and the HTTP endpoint serving /healthz and /metrics."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from gateways.core.health import HealthServer
from gateways.core.metrics import Metrics
from servers import free_port


def fetch(url: str, method: str = "GET") -> tuple[int, str, str]:
    """Status, Content-Type and body of ``url`` (errors included)."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_series_render_with_labels_and_two_registries_keep_apart():
    one, two = Metrics(), Metrics()
    one.inc("messages_in_total", "messages handed to the layer", type="websocket.receive")
    one.inc("messages_in_total", "messages handed to the layer", amount=2, type="websocket.receive")
    one.add("connections_open", 1, "open WebSocket connections")
    one.observe("layer_send_seconds", 0.002, "layer send latency")
    two.set("mqtt_connected", 1, "whether the broker connection is up")
    text = one.render()
    assert 'gateway_messages_in_total{type="websocket.receive"} 3.0' in text
    assert "gateway_connections_open 1.0" in text
    assert 'gateway_layer_send_seconds_bucket{le="0.0025"} 1.0' in text
    assert "_created" not in text
    assert "mqtt_connected" not in text
    assert one.value("messages_in_total", type="websocket.receive") == 3
    assert one.value("connections_open") == 1
    assert two.value("messages_in_total", type="websocket.receive") == 0


def test_a_series_keeps_its_kind_and_label_names(caplog):
    strict = Metrics(strict=True)
    strict.inc("handoff_failures_total", "refused", reason="full", type="x")
    with pytest.raises(ValueError, match="labels"):
        strict.inc("handoff_failures_total", "refused", reason="full")
    with pytest.raises(ValueError, match="not a Gauge"):
        strict.set("handoff_failures_total", 1, reason="full", type="x")
    lenient = Metrics(strict=False)
    lenient.inc("handoff_failures_total", "refused", reason="full", type="x")
    lenient.inc("handoff_failures_total", "refused", reason="full")
    lenient.inc("handoff_failures_total", "refused", reason="full")
    assert lenient.value("handoff_failures_total", reason="full", type="x") == 1
    assert [r.getMessage() for r in caplog.records] == [
        "metric 'handoff_failures_total' has labels ('reason', 'type'), not ('reason',): sample dropped (logged once)"]


def test_a_cleared_series_counts_again_when_its_labels_come_back():
    metrics = Metrics(strict=True)
    metrics.set("dead_letters", 4, "dead letters", channel="email.receive")
    metrics.clear("dead_letters")
    assert 'channel="email.receive"' not in metrics.render()
    metrics.set("dead_letters", 2, "dead letters", channel="email.receive")
    assert 'gateway_dead_letters{channel="email.receive"} 2.0' in metrics.render()


async def test_scrape_runs_collectors_and_survives_a_broken_one():
    metrics = Metrics()
    depths = {"a": 3}

    async def queue_depths(m: Metrics) -> None:
        m.clear("channel_queue_depth")
        for channel, depth in depths.items():
            m.set("channel_queue_depth", depth, "messages waiting", channel=channel)

    def broken(_m: Metrics) -> None:
        raise RuntimeError("store away")

    metrics.on_scrape(broken)
    metrics.on_scrape(queue_depths)
    assert 'gateway_channel_queue_depth{channel="a"} 3.0' in await metrics.scrape()
    depths = {"b": 1}
    text = await metrics.scrape()
    assert 'channel="a"' not in text and 'gateway_channel_queue_depth{channel="b"} 1.0' in text
    assert metrics.value("scrape_errors_total", collector="test_scrape_runs_collectors_and_survives_a_broken_one."
                                                           "<locals>.broken") == 2


@pytest.mark.integration
async def test_endpoint_answers_healthz_metrics_404_and_405():
    metrics = Metrics()
    metrics.inc("messages_in_total", "messages handed to the layer", type="t")
    state = {"healthy": True}
    server = HealthServer(metrics, lambda: (state["healthy"], {"layer": state["healthy"], "stopping": False}))
    port = free_port()
    await server.start("127.0.0.1", port)
    base = f"http://127.0.0.1:{port}"
    try:
        status, ctype, body = await asyncio.to_thread(fetch, f"{base}/healthz")
        assert (status, ctype, json.loads(body)) == (200, "application/json",
                                                     {"healthy": True, "layer": True, "stopping": False})
        state["healthy"] = False
        status, _, body = await asyncio.to_thread(fetch, f"{base}/healthz?verbose=1")
        assert (status, json.loads(body)["healthy"]) == (503, False)
        status, ctype, body = await asyncio.to_thread(fetch, f"{base}/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert 'gateway_messages_in_total{type="t"} 1.0' in body
        assert (await asyncio.to_thread(fetch, f"{base}/nothing"))[0] == 404
        assert (await asyncio.to_thread(fetch, f"{base}/healthz", "POST"))[0] == 405
    finally:
        await server.close()
