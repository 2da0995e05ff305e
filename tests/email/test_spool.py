"""The spool on a real directory: batches, reading back, dead letters, damage."""

from __future__ import annotations

import asyncio

import pytest

from gateways.email.spool import GroupCommit, Spool, SpoolEntry, new_id


def entry(n: int) -> SpoolEntry:
    return SpoolEntry(new_id(), {"mail_from": "a@x.test", "rcpt_to": ["b@demo.local"]},
                      [{"channel": "email.receive", "recipients": ["b@demo.local"], "kwargs": {}}],
                      b"Subject: %d\r\n\r\nbody\r\n" % n)


async def test_concurrent_writes_share_batches_and_read_back(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    writer = GroupCommit(spool)
    entries = [entry(n) for n in range(40)]
    await asyncio.gather(*(writer.write(e) for e in entries))
    batches = {e.batch for e in entries}
    assert None not in batches and len(list(spool.new.iterdir())) == len(batches) < 40
    back = {e.id: e for e in spool.pending()}
    assert {i: e.raw for i, e in back.items()} == {e.id: e.raw for e in entries}
    one = entries[7]
    assert spool.read(one.id, one.batch).raw == one.raw
    dead = spool.bury(one.id, one.batch)
    assert spool.read(one.id, dead.name, dead.parent).raw == one.raw
    for batch in batches:
        spool.remove(batch)
    assert list(spool.pending()) == [] and spool.dead_count() == 1


async def test_write_failure_reaches_every_waiter(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    spool.tmp.rmdir()
    spool.tmp.write_text("in the way")
    writer = GroupCommit(spool)
    results = await asyncio.gather(*(writer.write(entry(n)) for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert list(spool.new.iterdir()) == []


def test_damaged_and_half_written_files(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    spool.write(entry(1))
    (spool.new / "garbage").write_bytes(b"\x00not msgpack")
    (spool.tmp / "half-written").write_bytes(b"x")
    spool.open()  # a restart clears tmp/ (never answered 250)
    assert list(spool.tmp.iterdir()) == []
    assert [e.raw for e in spool.pending()] == [entry(1).raw]
    assert (spool.dead / "garbage.unreadable").exists()
    with pytest.raises(KeyError):
        spool.read("missing", next(spool.new.iterdir()).name)
