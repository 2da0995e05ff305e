"""The core's durable store with the entry any gateway may use: written in one flush for
all that arrive together, read back after a restart until released, buried when spent."""

from __future__ import annotations

import asyncio

from gateways.core.store import GroupCommit, JournalStore, StoredEntry, new_id


def store_at(path) -> JournalStore[StoredEntry]:
    store = JournalStore(path, StoredEntry.decode, fsync=False, segment_size=64 * 1024)
    store.open()
    return store


async def test_entries_written_together_share_a_flush_and_come_back_after_a_restart(tmp_path):
    store = store_at(tmp_path)
    writer = GroupCommit(store, "test store")
    entries = [StoredEntry(new_id(), {"topic": f"t/{n}", "payload": b"x" * n}) for n in range(5)]
    await asyncio.gather(*(writer.write(entry) for entry in entries))
    assert len({entry.batch for entry in entries}) == 1, "entries that arrived together were flushed apart"
    store.release(entries[0].id, entries[0].batch)
    store.close()

    reopened = store_at(tmp_path)
    pending = list(reopened.pending())
    assert [entry.id for entry in pending] == [entry.id for entry in entries[1:]]
    assert pending[1].data == {"topic": "t/2", "payload": b"xx"}
    again = reopened.read(pending[1].id, pending[1].batch, offset=pending[1].offset)
    assert again == pending[1]


async def test_a_spent_entry_is_buried_where_an_operator_finds_it(tmp_path):
    store = store_at(tmp_path)
    entry = StoredEntry(new_id(), {"why": "spent"})
    store.write(entry)
    path = store.bury(entry.id, entry.batch, entry.offset)
    assert path.parent == store.dead
    assert store.read(entry.id, path.name, path.parent).data == {"why": "spent"}
