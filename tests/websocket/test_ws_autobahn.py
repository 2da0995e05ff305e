"""The Autobahn TestSuite cases through the whole path: client -> gateway ->
layer -> echo consumer under runworker -> layer -> gateway -> client.

Pass means no FAILED case; NON-STRICT, INFORMATIONAL and UNIMPLEMENTED are
conformant. Compression is not negotiated, so 12.* and 13.* are left out.
A few cases fail in plain websockets 17 itself (7.1.5, and the
9.3/9.4 cases whose 4 MiB messages come in more than websockets' 4,096
fragments), so the same cases run in the same test against a plain
websockets echo server with the same limits, and the gateway may fail only
where that baseline fails. The 9.* cases (messages up to 16 MiB) run with
`max_message_size` raised to fit them.
"""

from __future__ import annotations

import collections

import pytest
import websockets

from ws_stack import start_gateway, start_worker, write_config

kosoku = pytest.importorskip("kosoku", reason="pip install kosoku (a test extra)")

pytestmark = pytest.mark.e2e
EXCLUDE = ["12.*", "13.*"]
MAX_SIZE = 17 * 2**20


async def run_cases(url: str) -> list:
    try:
        return await kosoku.run_fuzzingclient(url, exclude_cases=EXCLUDE, concurrency=4)
    except kosoku.FailureError as exc:
        return exc.results


def summary(name: str, results: list) -> set[str]:
    counts = collections.Counter(r.behavior.value for r in results)
    close_counts = collections.Counter(r.behavior_close.value for r in results)
    print(f"\nAutobahn, {name}: {len(results)} cases: {dict(counts)}; closing: {dict(close_counts)}")
    return {r.case_id for r in results if r.behavior.value in ("FAILED", "ERROR")}


async def _echo(ws) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.mark.timeout(600)
async def test_autobahn_cases_through_the_full_path(redis_server, tmp_path):
    async with websockets.serve(_echo, "127.0.0.1", 0, max_size=MAX_SIZE, compression=None) as plain:
        plain_port = plain.sockets[0].getsockname()[1]
        baseline = summary("plain websockets echo (baseline)", await run_cases(f"ws://127.0.0.1:{plain_port}"))
    config, port = write_config(tmp_path, redis_server.url, allowed_origins=[], max_message_size=MAX_SIZE,
                                routes=[{"path": "^/.*$", "channel": "websocket.echo"}])
    gateway = start_gateway(config, port)
    worker = start_worker(config)
    try:
        results = await run_cases(f"ws://127.0.0.1:{port}")
    finally:
        worker.stop()
        gateway.stop()
    failed = summary("gateway -> layer -> runworker echo -> gateway", results)
    print(f"failed in both: {sorted(failed & baseline)}")
    assert not failed - baseline, f"cases failing through the gateway only: {sorted(failed - baseline)}"
    assert baseline <= {"7.1.5", "9.3.1", "9.3.2", "9.4.1", "9.4.2"}, f"baseline changed: {sorted(baseline)}"
    assert len(results) > 250
