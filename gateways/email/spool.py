"""The durable inbound spool: what the gateway answered 250 for.

Messages are written in batches (group commit): every message whose DATA
ended while the previous batch was being flushed goes into the next batch
file, ``new/<batch id>``, a msgpack map holding each message's envelope,
deliveries (channel and recipients per route) and raw bytes. A batch is
written to ``tmp/``, fsynced, renamed into ``new/`` and the directory fsynced
before any of its SMTP clients hears 250, so a crash after a 250 cannot lose
the message, and twenty clients share one fsync instead of paying twenty.

A batch file is deleted once every message in it is acknowledged or dead;
a message whose hand-offs are spent is first copied, alone, to ``dead/``,
where it stays for an operator. (A restart before a whole batch is done
hands its acknowledged messages again: at-least-once.)

The blocking methods are called through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import msgpack

FORMAT = 2
#: Messages in one batch at most (bounds a batch file and a re-read).
MAX_BATCH = 64


def new_id() -> str:
    """A unique, roughly time-ordered id (safe as a file name)."""
    return f"{time.time_ns():x}-{uuid.uuid4().hex[:16]}"


@dataclass
class SpoolEntry:
    """One accepted message as the spool keeps it.

    Args:
        id: the message's spool id.
        envelope: the ``email.receive`` ``envelope`` dict.
        deliveries: ``{"channel", "recipients", "kwargs"}`` per route.
        raw: the message bytes (``None`` when not kept in memory).
        batch: the batch file it is in, once written.
    """

    id: str
    envelope: dict[str, Any]
    deliveries: list[dict[str, Any]]
    raw: bytes | None = field(default=None, repr=False)
    batch: str | None = None

    def record(self) -> dict[str, Any]:
        """What the spool file holds of it."""
        return {"id": self.id, "envelope": self.envelope, "deliveries": self.deliveries, "raw": self.raw}


class Spool:
    """A directory of spooled messages.

    Args:
        root: the spool directory; ``tmp/``, ``new/`` and ``dead/`` are made in it.
        fsync: flush every write to the disk (on unless measuring the disk's share).
    """

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self.tmp = root / "tmp"
        self.new = root / "new"
        self.dead = root / "dead"

    def open(self) -> None:
        """Create the directories and clear half-written files of an earlier run."""
        for directory in (self.tmp, self.new, self.dead):
            directory.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():  # never renamed into new/: never answered 250
            stale.unlink(missing_ok=True)

    def write_batch(self, entries: list[SpoolEntry]) -> str:
        """Store ``entries`` durably in one file; return its name. ``OSError`` when the disk refuses."""
        name = new_id()
        self._write(self.new, name, entries)
        for entry in entries:
            entry.batch = name
        return name

    def write(self, entry: SpoolEntry) -> str:
        """Store one entry durably (a batch of one)."""
        return self.write_batch([entry])

    def read(self, entry_id: str, batch: str, directory: Path | None = None) -> SpoolEntry:
        """The entry ``entry_id`` of file ``batch``, with its raw bytes."""
        for entry in self._load(directory or self.new, batch):
            if entry.id == entry_id:
                return entry
        raise KeyError(f"{entry_id} is not in spool file {batch}")

    def pending(self) -> Iterator[SpoolEntry]:
        """Every entry in ``new/``, oldest first; unreadable files are moved to ``dead/``."""
        for path in sorted(self.new.iterdir()):
            try:
                entries = self._load(self.new, path.name)
            except (ValueError, KeyError, TypeError, msgpack.UnpackException):
                os.rename(path, self.dead / f"{path.name}.unreadable")
                continue
            yield from entries

    def remove(self, batch: str) -> None:
        """Forget a batch whose entries are all done (at worst they are handed again after a crash)."""
        (self.new / batch).unlink(missing_ok=True)

    def bury(self, entry_id: str, batch: str) -> Path:
        """Copy a spent entry to ``dead/<id>``, where it stays; return that path."""
        entry = self.read(entry_id, batch)
        self._write(self.dead, entry.id, [entry])
        return self.dead / entry.id

    def dead_count(self) -> int:
        """How many files ``dead/`` holds."""
        return sum(1 for _ in self.dead.iterdir())

    def _load(self, directory: Path, name: str) -> list[SpoolEntry]:
        data = msgpack.unpackb((directory / name).read_bytes(), raw=False)
        if data.get("format") != FORMAT:
            raise ValueError(f"spool file {name}: unknown format {data.get('format')!r}")
        return [SpoolEntry(e["id"], e["envelope"], e["deliveries"], e["raw"], name) for e in data["entries"]]

    def _write(self, directory: Path, name: str, entries: list[SpoolEntry]) -> None:
        data = msgpack.packb({"format": FORMAT, "entries": [e.record() for e in entries]}, use_bin_type=True)
        tmp = self.tmp / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, directory / name)
        if self.fsync:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class GroupCommit:
    """Writes entries to the spool in batches: one fsync for all that arrive together.

    Args:
        spool: the spool written to.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._waiting: list[tuple[SpoolEntry, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def write(self, entry: SpoolEntry) -> None:
        """Return once ``entry`` is durable; raise ``OSError`` when it could not be written."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="email spool flush")
        await asyncio.shield(future)  # a client that hangs up must not cancel the others' batch

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                await asyncio.to_thread(self.spool.write_batch, [entry for entry, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter hears why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
