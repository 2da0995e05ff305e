"""The durable inbound spool: what the gateway answered 250 for.

One file per accepted message, ``new/<id>``: a msgpack map of the envelope,
the deliveries (channel and recipients per route) and the raw bytes. It is
written to ``tmp/``, fsynced, renamed into ``new/`` and the directory fsynced
before the SMTP client hears 250, so a crash after the 250 cannot lose it.
An acknowledged message is deleted; one whose hand-offs are spent moves to
``dead/`` and stays there for an operator.

The methods do blocking file I/O: the daemon calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import msgpack

FORMAT = 1


def new_id() -> str:
    """A unique, roughly time-ordered spool id (safe as a file name)."""
    return f"{time.time_ns():x}-{uuid.uuid4().hex[:16]}"


@dataclass
class SpoolEntry:
    """One accepted message as the spool keeps it.

    Args:
        id: the spool id (the file name).
        envelope: the ``email.receive`` ``envelope`` dict.
        deliveries: ``{"channel", "recipients", "kwargs"}`` per route.
        raw: the message bytes (``None`` when only the metadata was read).
    """

    id: str
    envelope: dict[str, Any]
    deliveries: list[dict[str, Any]]
    raw: bytes | None = field(default=None, repr=False)


class Spool:
    """A directory of spooled messages.

    Args:
        root: the spool directory; ``tmp/``, ``new/`` and ``dead/`` are made in it.
        fsync: flush every write to the disk (tests of speed only turn it off).
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

    def write(self, entry: SpoolEntry) -> None:
        """Store ``entry`` durably; raises ``OSError`` when the disk refuses."""
        data = msgpack.packb(
            {"format": FORMAT, "id": entry.id, "envelope": entry.envelope,
             "deliveries": entry.deliveries, "raw": entry.raw},
            use_bin_type=True,
        )
        tmp = self.tmp / entry.id
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
        os.rename(tmp, self.new / entry.id)
        if self.fsync:
            self._sync_dir(self.new)

    def read(self, entry_id: str, directory: Path | None = None) -> SpoolEntry:
        """The entry ``entry_id`` with its raw bytes."""
        data = msgpack.unpackb(((directory or self.new) / entry_id).read_bytes(), raw=False)
        return SpoolEntry(data["id"], data["envelope"], data["deliveries"], data["raw"])

    def pending(self) -> Iterator[SpoolEntry]:
        """Every entry in ``new/``, oldest first; unreadable files are moved to ``dead/``."""
        for path in sorted(self.new.iterdir()):
            try:
                yield self.read(path.name)
            except (ValueError, KeyError, TypeError, msgpack.UnpackException):
                os.rename(path, self.dead / f"{path.name}.unreadable")

    def remove(self, entry_id: str) -> None:
        """Forget an acknowledged entry (at worst it is handed again after a crash)."""
        (self.new / entry_id).unlink(missing_ok=True)

    def bury(self, entry_id: str) -> Path:
        """Move an entry whose hand-offs are spent to ``dead/``; return its new path."""
        target = self.dead / entry_id
        os.rename(self.new / entry_id, target)
        if self.fsync:
            self._sync_dir(self.dead)
        return target

    def dead_count(self) -> int:
        """How many entries ``dead/`` holds."""
        return sum(1 for _ in self.dead.iterdir())

    @staticmethod
    def _sync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
