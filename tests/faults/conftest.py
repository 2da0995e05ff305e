"""Fault probes: poison input and bad consumer messages against real daemons.

The protocol test packages' stacks (configs, clients, layer readers) are reused.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for package in ("mqtt", "email", "websocket"):
    if str(TESTS / package) not in sys.path:
        sys.path.append(str(TESTS / package))


@pytest.fixture
def processes():
    """Daemons and clients a test starts; all stopped afterwards."""
    started: list = []
    yield started
    for proc in reversed(started):
        try:
            proc.close() if hasattr(proc, "close") else proc.stop()
        except Exception:  # noqa: BLE001 - stop the rest anyway
            pass
