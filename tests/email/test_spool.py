"""The spool journal on a real directory: batches, reading back, releases, roll-over, damage."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from gateways.email.spool import RECORD_MAGIC, GroupCommit, Spool, SpoolEntry, new_id
from servers import wait_until


def entry(n: int) -> SpoolEntry:
    return SpoolEntry(new_id(), {"mail_from": "a@x.test", "rcpt_to": ["b@demo.local"]},
                      [{"channel": "email.receive", "recipients": ["b@demo.local"], "kwargs": {}}],
                      b"Subject: %d\r\n\r\nbody\r\n" % n)


def opened(path, **options) -> Spool:
    spool = Spool(path, **options)
    spool.open()
    return spool


def segments(spool: Spool) -> list[str]:
    return sorted(p.name for p in spool.new.iterdir() if not p.name.endswith(".done"))


async def test_concurrent_writes_share_records_and_read_back(tmp_path):
    spool = opened(tmp_path)
    writer = GroupCommit(spool)
    entries = [entry(n) for n in range(40)]
    await asyncio.gather(*(writer.write(e) for e in entries))
    assert len({e.offset for e in entries}) < 40, "concurrent writes were not grouped"
    assert {e.batch for e in entries} == set(segments(spool)) and len(segments(spool)) == 1
    back = {e.id: e for e in opened(tmp_path).pending()}
    assert {i: e.raw for i, e in back.items()} == {e.id: e.raw for e in entries}
    one = entries[7]
    assert spool.read(one.id, one.batch, offset=one.offset).raw == one.raw
    assert spool.read(one.id, one.batch).raw == one.raw  # without the offset: a scan
    dead = spool.bury(one.id, one.batch, one.offset)
    assert spool.read(one.id, dead.name, dead.parent).raw == one.raw and spool.dead_count() == 1


async def test_released_segment_is_deleted_once_idle(tmp_path):
    spool = opened(tmp_path)
    spool.idle_retire = 0.2
    entries = [entry(n) for n in range(3)]
    for e in entries:
        spool.write(e)
    for e in entries[:2]:
        spool.release(e.id, e.batch)
    spool.sweep()
    assert segments(spool) == [entries[0].batch], "a segment with a live entry was deleted"
    spool.release(entries[2].id, entries[2].batch)
    assert spool.needs_sweep()
    spool.sweep()
    assert segments(spool) == [entries[0].batch], "the active segment went while still written to"
    assert spool.needs_sweep()
    wait_until(spool.sweep, 5, "a sweep deleted the released segment once idle past idle_retire")
    assert segments(spool) == [] and list(spool.new.iterdir()) == []
    later = entry(9)
    spool.write(later)  # a fresh segment, from the spare the sweep made ready
    assert [e.raw for e in opened(tmp_path).pending()] == [later.raw]


async def test_released_entries_are_not_handed_again_after_a_restart(tmp_path):
    spool = opened(tmp_path)
    entries = [entry(n) for n in range(5)]
    spool.write_batch(entries[:3])
    spool.write_batch(entries[3:])
    for e in entries[1:4]:
        spool.release(e.id, e.batch)
    spool.close()  # notes the releases, as a stop does (a sweep would too)
    assert [e.id for e in opened(tmp_path).pending()] == [entries[0].id, entries[4].id]


async def test_full_segment_rolls_over_and_goes_when_released(tmp_path):
    spool = opened(tmp_path, segment_size=4096)
    entries = [entry(n) for n in range(60)]
    for e in entries:
        spool.write(e)
    names = sorted({e.batch for e in entries})
    assert len(names) >= 3 and segments(spool) == names
    big = SpoolEntry(new_id(), {}, [], b"x" * 10_000)  # larger than a segment: one of its own
    spool.write(big)
    assert spool.read(big.id, big.batch, offset=big.offset).raw == big.raw
    for e in entries:
        spool.release(e.id, e.batch)
    spool.sweep()
    assert segments(spool) == [big.batch], "released full segments were kept"
    assert [e.raw for e in opened(tmp_path).pending()] == [big.raw]


async def test_write_failure_reaches_every_waiter(tmp_path):
    spool = opened(tmp_path)
    spool.tmp.rmdir()
    spool.tmp.write_text("in the way")  # no segment can be made (root ignores permissions)
    writer = GroupCommit(spool)
    results = await asyncio.gather(*(writer.write(entry(n)) for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert list(spool.new.iterdir()) == []


async def test_the_active_segment_takes_mail_when_no_new_one_can_be_made(tmp_path):
    spool = opened(tmp_path, segment_size=8192)
    first = entry(1)
    spool.write(first)
    spool.tmp.rmdir()
    spool.tmp.write_text("in the way")  # as a full disk would: no new segment
    second = entry(2)
    spool.write(second)  # room left in the zero-filled active segment: no new block needed
    assert second.batch == first.batch
    with pytest.raises(OSError):
        spool.write(SpoolEntry(new_id(), {}, [], b"x" * 8192))  # needs a new segment
    third = entry(3)
    spool.write(third)  # the active segment is still good
    spool.tmp.unlink()
    assert [e.raw for e in opened(tmp_path).pending()] == [first.raw, second.raw, third.raw]


def test_damaged_records_and_files(tmp_path, caplog):
    spool = opened(tmp_path)
    entries = [entry(n) for n in range(3)]
    for e in entries:
        spool.write(e)
    spool.close()
    path = spool.new / entries[0].batch
    data = bytearray(path.read_bytes())
    data[entries[1].offset + 20] ^= 0xFF  # a bad disk: the middle record's bytes changed
    end = data.index(bytes(64), entries[2].offset)
    data[end:end + 40] = RECORD_MAGIC + b"\x00\x00\x10\x00" + b"torn write, never answered 250"[:32]
    path.write_bytes(bytes(data))
    (spool.new / "garbage").write_bytes(b"\x00not msgpack")
    (spool.tmp / "half-made").write_bytes(b"x")
    spool = opened(tmp_path)  # a restart clears tmp/ (nothing there got a 250)
    assert list(spool.tmp.iterdir()) == []
    assert [e.raw for e in spool.pending()] == [entries[0].raw, entries[2].raw]
    assert "damaged record" in caplog.text
    assert (spool.dead / "garbage.unreadable").exists()
    with pytest.raises(KeyError):
        spool.read("missing", entries[0].batch)


def test_batch_files_of_earlier_versions_are_read_back(tmp_path):
    spool = opened(tmp_path)
    old = entry(1)
    (spool.new / "0-old").write_bytes(msgpack.packb({"format": 2, "entries": [old.record()]}, use_bin_type=True))
    back = list(spool.pending())
    assert [(e.id, e.raw) for e in back] == [(old.id, old.raw)]
    spool.release(back[0].id, back[0].batch)
    spool.sweep()
    assert list(spool.new.iterdir()) == []
