"""The durable inbound spool: what the gateway answered 250 for.

The spool is the core's journal store (:class:`~gateways.core.store.JournalStore`,
where its on-disk format is described) holding one :class:`SpoolEntry` per
accepted message: its envelope, its deliveries (one per route) and its raw
bytes. A batch of entries is ``fdatasync``-ed before any of its SMTP clients
hears 250; an entry is released once every consumer acknowledged it or its
hand-offs are spent (then it is first copied to ``dead/``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateways.core.store import RECORD_MAGIC, SEGMENT_SIZE, GroupCommit, JournalStore, new_id

__all__ = ["RECORD_MAGIC", "GroupCommit", "Spool", "SpoolEntry", "new_id"]

log = logging.getLogger("gateway.email")


@dataclass
class SpoolEntry:
    """One accepted message as the spool keeps it.

    Args:
        id: the message's spool id.
        envelope: the ``email.receive`` ``envelope`` dict.
        deliveries: ``{"channel", "recipients", "kwargs"}`` per route.
        raw: the message bytes (``None`` when not kept in memory).
        batch: the segment (or batch file) it is in, once written.
        offset: where its record starts in the segment (``None`` in a batch file).
    """

    id: str
    envelope: dict[str, Any]
    deliveries: list[dict[str, Any]]
    raw: bytes | None = field(default=None, repr=False)
    batch: str | None = None
    offset: int | None = None

    def record(self) -> dict[str, Any]:
        """What the spool holds of it."""
        return {"id": self.id, "envelope": self.envelope, "deliveries": self.deliveries, "raw": self.raw}

    @classmethod
    def decode(cls, record: dict[str, Any], batch: str, offset: int | None) -> "SpoolEntry":
        """The entry of a spooled record."""
        return cls(record["id"], record["envelope"], record["deliveries"], record["raw"], batch, offset)


class Spool(JournalStore[SpoolEntry]):
    """A directory of spooled messages.

    Args:
        root: the spool directory; ``tmp/``, ``new/`` and ``dead/`` are made in it.
        fsync: flush every write to the disk (on unless measuring the disk's share).
        segment_size: bytes each segment is zero-filled to.
    """

    def __init__(self, root: Path, fsync: bool = True, segment_size: int = SEGMENT_SIZE) -> None:
        super().__init__(root, SpoolEntry.decode, fsync=fsync, segment_size=segment_size, log=log)

