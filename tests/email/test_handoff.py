"""The hand-off on a real spool and the in-memory layer: deadlines of acknowledged mail do not pile up."""

from __future__ import annotations

import asyncio

from gateways.core.config import load_config
from gateways.core.daemon import Runtime
from gateways.email.handoff import TIMERS_SLACK, Handoff
from gateways.email.spool import Spool, SpoolEntry, new_id


async def test_deadlines_of_acknowledged_deliveries_are_dropped(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("layer: {url: 'memory://local', capacity: 100000}\n"
                    "email: {listen: '127.0.0.1:0', domains: [demo.local], relay: 'console://'}\n")
    config = load_config(path)
    runtime = Runtime(config, config.sections["email"], "email")
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.open()
    handoff = Handoff(runtime, spool, "email.gw!", "email.dead", ack_timeout=60, max_attempts=3, concurrency=4)
    handoff.start()
    total = 3 * TIMERS_SLACK
    try:
        for n in range(total):
            entry = SpoolEntry(new_id(), {"mail_from": "a@x.test", "rcpt_to": ["b@demo.local"]},
                               [{"channel": "email.receive", "recipients": ["b@demo.local"], "kwargs": {}}],
                               b"Subject: %d\r\n\r\nbody\r\n" % n)
            spool.write(entry)
            handoff.add(entry)
        for _ in range(total):
            message = await asyncio.wait_for(runtime.layer.receive("email.receive"), 10)
            assert await handoff.ack(message["id"])
        assert handoff.pending == 0
        assert len(handoff._timers) <= TIMERS_SLACK + 1, "deadlines of acknowledged mail were kept"
    finally:
        for task in list(runtime._tasks):
            task.cancel()
        await asyncio.gather(*runtime._tasks, return_exceptions=True)
