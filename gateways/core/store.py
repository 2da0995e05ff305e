"""A durable store of received messages, for a gateway that answers its peer only once
a message is safe on disk (email's 250), and the group commit that writes it.

:class:`JournalStore` is a journal. Entries are appended, in batches (group
commit, :class:`GroupCommit`: every entry that arrives while the previous
batch is being flushed goes into the next one), to the active *segment*,
``new/<name>``, a file zero-filled ahead of time. A batch is one record (a
header with length and CRC-32, then a msgpack list of the entries' records),
and it is ``fdatasync``-ed before the writers hear that it is durable.
Because the segment's blocks were written and flushed when it was made, that
sync is the data alone: no file to create, rename or unlink and no directory
to flush per entry, which on ext4 makes a durable write about a third of what
a file per batch costs. It also means a full disk stops new entries only
when a new segment is needed.

Segments are made in ``tmp/`` and renamed into ``new/`` (the directory
fsynced once per segment); one spare is kept ready so that rolling over does
not wait for the zero-fill. A segment is deleted once every entry in it is
released (acknowledged or dead): at once when it is full, after
:data:`IDLE_RETIRE` seconds without writes when it is the active one. Entries
released are noted in ``new/<name>.done`` (written, not synced: it only
spares consumers duplicates after a restart; losing it costs duplicates,
never data). An entry whose hand-offs are spent is first copied, alone, to
``dead/``, where it stays for an operator.

Single-file batches (one msgpack map per file, as ``dead/`` holds and earlier
versions wrote to ``new/``) are read back too. What an entry holds is the
gateway's: the store keeps what :meth:`Entry.record` gives, under an ``id``.
The blocking methods are called through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Protocol, TypeVar

import msgpack

log = logging.getLogger("gateway.store")

#: Format of single-file batches (``dead/`` entries, and ``new/`` in earlier versions).
FORMAT = 2
#: Entries in one batch at most (bounds a record and a re-read).
MAX_BATCH = 64
#: First bytes of a segment; records start after them.
SEGMENT_MAGIC = b"GWSPOOL1" + bytes(8)
#: A record: magic, payload length, CRC-32 of the payload.
RECORD = struct.Struct(">4sII")
RECORD_MAGIC = b"REC1"
#: Bytes a segment is zero-filled to (a record that does not fit goes to the next one).
SEGMENT_SIZE = 8 * 1024 * 1024
#: Seconds without writes after which a fully released active segment is deleted.
IDLE_RETIRE = 1.0
DONE_SUFFIX = ".done"
#: Seconds before trying again to make a spare segment after the disk refused.
SPARE_RETRY = 5.0


def new_id() -> str:
    """A unique, roughly time-ordered id (safe as a file name)."""
    return f"{time.time_ns():x}-{uuid.uuid4().hex[:16]}"


class Entry(Protocol):
    """What a store keeps: a record with an ``id``, and where it was written."""

    id: str
    batch: str | None
    offset: int | None

    def record(self) -> dict[str, Any]:
        """What the store writes of it (msgpack-able, with ``id``)."""
        ...


E = TypeVar("E", bound=Entry)
#: Makes an entry of a stored record, the segment (or batch file) it is in and its offset there.
Decode = Callable[[dict[str, Any], str, "int | None"], E]


@dataclass
class StoredEntry:
    """An entry of any gateway: an id and the fields it keeps.

    Args:
        id: the entry's id (:func:`new_id`).
        data: what is kept besides the id (msgpack-able).
        batch: the segment (or batch file) it is in, once written.
        offset: where its record starts in the segment (``None`` in a batch file).
    """

    id: str
    data: dict[str, Any] = field(repr=False)
    batch: str | None = None
    offset: int | None = None

    def record(self) -> dict[str, Any]:
        """What the store holds of it."""
        return {"id": self.id, **self.data}

    @classmethod
    def decode(cls, record: dict[str, Any], batch: str, offset: int | None) -> "StoredEntry":
        """The entry of a stored record."""
        data = dict(record)
        return cls(data.pop("id"), data, batch, offset)


class Store(Protocol[E]):
    """A durable store of entries: written before the peer hears yes, released when done.

    The methods block: call them through ``asyncio.to_thread``.
    """

    root: Path

    def open(self) -> None:
        """Prepare the store (and clear what an earlier run left half made)."""

    def close(self) -> None:
        """Close what is open; what is on disk stays valid."""

    def write_batch(self, entries: list[E]) -> str:
        """Store ``entries`` durably, together; return where (their ``batch``). Raises ``OSError``."""

    def release(self, entry_id: str, batch: str) -> None:
        """Entry ``entry_id`` of ``batch`` is done (acknowledged or dead). Cheap: no I/O."""

    def needs_sweep(self) -> bool:
        """Whether :meth:`sweep` has something to do."""

    def sweep(self) -> list[str]:
        """Tidy what was released; return what was deleted."""

    def read(self, entry_id: str, batch: str, directory: Path | None = None,
             offset: int | None = None) -> E:
        """Read back one entry."""

    def pending(self) -> Iterator[E]:
        """Every entry not yet released, oldest first (call before writing)."""

    def bury(self, entry_id: str, batch: str, offset: int | None = None) -> Path:
        """Copy a spent entry to where it stays for an operator; return that path."""


class _Segment:
    """The open, active segment: appended to at ``end``."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.end = len(SEGMENT_MAGIC)
        self.last_write = time.monotonic()

    def close(self) -> None:
        os.close(self.fd)


class JournalStore(Generic[E]):
    """A directory of stored entries: the file-backed :class:`Store`.

    Args:
        root: the directory; ``tmp/``, ``new/`` and ``dead/`` are made in it.
        decode: makes an entry of a stored record (``Entry.record()``), its segment and offset.
        fsync: flush every write to the disk (on unless measuring the disk's share).
        segment_size: bytes each segment is zero-filled to.
        log: where damaged files and a refusing disk are logged.
    """

    def __init__(self, root: Path, decode: Decode[E], fsync: bool = True, segment_size: int = SEGMENT_SIZE,
                 log: logging.Logger = log) -> None:
        self.root = root
        self.decode = decode
        self.log = log
        #: Seconds without writes after which a fully released active segment is deleted.
        self.idle_retire = IDLE_RETIRE
        self.fsync = fsync
        self.segment_size = segment_size
        self.tmp = root / "tmp"
        self.new = root / "new"
        self.dead = root / "dead"
        self._active: _Segment | None = None
        self._spare: Path | None = None
        # The write lock orders appends, roll-overs and deletions; the count lock only
        # guards the counters, so that releasing never waits for a disk flush.
        self._write_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._live: dict[str, int] = {}
        self._released: dict[str, list[str]] = {}
        self._spare_problem: str | None = None
        self._spare_retry_at = 0.0

    def open(self) -> None:
        """Create the directories and clear half-made files of an earlier run."""
        for directory in (self.tmp, self.new, self.dead):
            directory.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():  # never renamed into new/: nothing in it got a 250
            stale.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the active segment and note what was released (what is on disk stays valid)."""
        with self._write_lock:
            self._note_released()
            if self._active is not None:
                self._active.close()
                self._active = None

    # -- writing -------------------------------------------------------------------

    def write_batch(self, entries: list[E]) -> str:
        """Store ``entries`` durably as one record; return the segment's name.

        Raises ``OSError`` when the disk refuses; nothing of the batch is then valid.
        """
        payload = msgpack.packb([e.record() for e in entries], use_bin_type=True)
        record = RECORD.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self._write_lock:
            segment = self._segment_for(len(record))
            offset = segment.end
            view = memoryview(record)
            position = offset
            while view:
                written = os.pwrite(segment.fd, view, position)
                view, position = view[written:], position + written
            if self.fsync:
                os.fdatasync(segment.fd)
            segment.end = position
            segment.last_write = time.monotonic()
            name = segment.path.name
            with self._count_lock:
                self._live[name] = self._live.get(name, 0) + len(entries)
        for entry in entries:
            entry.batch, entry.offset = name, offset
        return name

    def write(self, entry: E) -> str:
        """Store one entry durably (a batch of one)."""
        return self.write_batch([entry])

    def _segment_for(self, length: int) -> _Segment:
        active = self._active
        if active is not None and (active.end + length <= active.size or active.end == len(SEGMENT_MAGIC)):
            return active
        # Make the next one first: should that fail, the active segment stays usable.
        segment = self._start_segment()
        if active is not None:
            active.close()
        self._active = segment
        return segment

    def _start_segment(self) -> _Segment:
        spare, self._spare = self._spare, None
        if spare is None or not spare.exists():
            spare = self._make_spare()
        path = self.new / spare.name
        os.rename(spare, path)
        self._sync_directory(self.new)
        fd = os.open(path, os.O_RDWR)
        with self._count_lock:
            self._live.setdefault(path.name, 0)
        return _Segment(path, fd, max(os.fstat(fd).st_size, len(SEGMENT_MAGIC)))

    def _make_spare(self) -> Path:
        path = self.tmp / new_id()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, SEGMENT_MAGIC)
            zeros = bytes(1024 * 1024)
            left = self.segment_size - len(SEGMENT_MAGIC)
            while left > 0:
                left -= os.write(fd, zeros[:min(left, len(zeros))])
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return path

    def prepare_spare(self) -> None:
        """Zero-fill the next segment now, so that rolling over does not wait for it."""
        if self._spare is not None:
            return
        path = self._make_spare()  # outside the lock: appends go on meanwhile
        with self._write_lock:
            if self._spare is None:
                self._spare = path
                return
        path.unlink(missing_ok=True)

    def _sync_directory(self, directory: Path) -> None:
        if self.fsync:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- releasing -------------------------------------------------------------------

    def release(self, entry_id: str, batch: str) -> None:
        """Entry ``entry_id`` of ``batch`` is done (acknowledged or dead). Cheap: no I/O."""
        with self._count_lock:
            self._live[batch] = self._live.get(batch, 1) - 1
            self._released.setdefault(batch, []).append(entry_id)

    def needs_sweep(self) -> bool:
        """Whether :meth:`sweep` has something to do."""
        with self._count_lock:
            if self._released or any(live <= 0 for live in self._live.values()):
                return True
        return self._spare is None and time.monotonic() >= self._spare_retry_at

    def sweep(self) -> list[str]:
        """Delete what is all released, note releases, keep a spare ready; return the deleted names."""
        deleted = []
        with self._write_lock:
            with self._count_lock:
                empty = [name for name, live in self._live.items() if live <= 0]
            for name in empty:
                active = self._active
                if active is not None and active.path.name == name and \
                        time.monotonic() - active.last_write < self.idle_retire:
                    continue
                self._delete(name)
                deleted.append(name)
            self._note_released()
        if self._spare is None and time.monotonic() >= self._spare_retry_at:
            try:
                self.prepare_spare()
                self._spare_problem = None
            except OSError as exc:
                if str(exc) != self._spare_problem:  # once per cause, not every sweep
                    self.log.warning("cannot make the next spool segment in %s: %s", self.tmp, exc)
                self._spare_problem = str(exc)
                self._spare_retry_at = time.monotonic() + SPARE_RETRY
        return deleted

    def _note_released(self) -> None:
        with self._count_lock:
            released, self._released = self._released, {}
        for name, ids in released.items():
            if not (self.new / name).exists():
                continue
            with open(self.new / (name + DONE_SUFFIX), "a", encoding="ascii") as done:
                done.write("".join(f"{entry_id}\n" for entry_id in ids))

    def remove(self, batch: str) -> None:
        """Forget a whole segment or batch file (every entry in it is done)."""
        with self._write_lock:
            self._delete(batch)

    def _delete(self, name: str) -> None:
        # Called with the write lock held: no append can be under way.
        if self._active is not None and self._active.path.name == name:
            self._active.close()
            self._active = None
        with self._count_lock:
            self._live.pop(name, None)
            self._released.pop(name, None)
        (self.new / name).unlink(missing_ok=True)
        (self.new / (name + DONE_SUFFIX)).unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------

    def read(self, entry_id: str, batch: str, directory: Path | None = None,
             offset: int | None = None) -> E:
        """The entry ``entry_id`` of segment or file ``batch``, with its raw bytes."""
        path = (directory or self.new) / batch
        if offset is not None:
            with open(path, "rb") as f:
                f.seek(offset)
                header = f.read(RECORD.size)
                magic, length, crc = RECORD.unpack(header)
                payload = f.read(length)
            if magic != RECORD_MAGIC or zlib.crc32(payload) != crc:
                raise ValueError(f"spool segment {batch}: damaged record at {offset}")
            entries = self._entries(payload, batch, offset)
        else:
            entries = self._load(path)
        for entry in entries:
            if entry.id == entry_id:
                return entry
        raise KeyError(f"{entry_id} is not in spool file {batch}")

    def pending(self) -> Iterator[E]:
        """Every entry in ``new/`` not yet released, oldest first; unreadable files go to ``dead/``.

        Call before writing: the segments read become sealed ones, to be deleted when released.
        """
        for path in sorted(self.new.iterdir()):
            if path.name.endswith(DONE_SUFFIX):
                if not (self.new / path.name[:-len(DONE_SUFFIX)]).exists():
                    path.unlink(missing_ok=True)
                continue
            try:
                entries = self._load(path)
            except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
                self.log.error("spool file %s cannot be read (%s); moved to %s", path.name, exc, self.dead)
                os.rename(path, self.dead / f"{path.name}.unreadable")
                continue
            done_path = self.new / (path.name + DONE_SUFFIX)
            done = set(done_path.read_text(encoding="ascii").split()) if done_path.exists() else set()
            left = [entry for entry in entries if entry.id not in done]
            if not left:
                self.remove(path.name)
                continue
            with self._count_lock:
                self._live[path.name] = len(left)
            yield from left

    def bury(self, entry_id: str, batch: str, offset: int | None = None) -> Path:
        """Copy a spent entry to ``dead/<id>``, where it stays; return that path."""
        entry = self.read(entry_id, batch, offset=offset)
        data = msgpack.packb({"format": FORMAT, "entries": [entry.record()]}, use_bin_type=True)
        tmp = self.tmp / entry.id
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.rename(tmp, self.dead / entry.id)
        self._sync_directory(self.dead)
        return self.dead / entry.id

    def dead_count(self) -> int:
        """How many files ``dead/`` holds."""
        return sum(1 for _ in self.dead.iterdir())

    def _load(self, path: Path) -> list[E]:
        data = path.read_bytes()
        if data.startswith(SEGMENT_MAGIC[:8]):
            return list(self._scan(data, path.name))
        batch = msgpack.unpackb(data, raw=False)
        if not isinstance(batch, dict) or batch.get("format") != FORMAT:
            raise ValueError(f"spool file {path.name}: not a spool segment or batch")
        return [self.decode(e, path.name, None) for e in batch["entries"]]

    def _entries(self, payload: bytes, batch: str, offset: int) -> list[E]:
        return [self.decode(e, batch, offset) for e in msgpack.unpackb(payload, raw=False)]


    def _scan(self, data: bytes, name: str) -> Iterator[E]:
        """The entries of a segment's intact records.

        Zeros where a header belongs end the segment (nothing was written there). A
        damaged record (a torn write that never got its 250, or a bad disk) is logged
        and skipped: the scan goes on from the next record header.
        """
        position = len(SEGMENT_MAGIC)
        while position + RECORD.size <= len(data):
            magic, length, crc = RECORD.unpack_from(data, position)
            if magic == bytes(4) and length == 0:
                return
            start, end = position + RECORD.size, position + RECORD.size + length
            if magic == RECORD_MAGIC and end <= len(data) and zlib.crc32(data[start:end]) == crc:
                try:
                    yield from self._entries(data[start:end], name, position)
                except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
                    self.log.error("spool segment %s: record at %d cannot be read: %s", name, position, exc)
                position = end
                continue
            following = data.find(RECORD_MAGIC, position + 1)
            if following < 0:
                if any(data[position:position + 4096]):
                    self.log.error("spool segment %s: damaged record at %d, nothing readable after it", name, position)
                return
            self.log.error("spool segment %s: damaged record at %d; going on at %d", name, position, following)
            position = following


class GroupCommit(Generic[E]):
    """Writes entries to a store in batches: one flush for all that arrive together.

    Args:
        store: the store written to.
        name: names the flushing task.
    """

    def __init__(self, store: Store[E], name: str = "store") -> None:
        self.store = store
        self.name = name
        self._waiting: list[tuple[E, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def write(self, entry: E) -> None:
        """Return once ``entry`` is durable; raise ``OSError`` when it could not be written."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"{self.name} flush")
        await asyncio.shield(future)  # a client that hangs up must not cancel the others' batch

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                await asyncio.to_thread(self.store.write_batch, [entry for entry, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter hears why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
