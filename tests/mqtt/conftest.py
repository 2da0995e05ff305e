"""Fixtures of the MQTT tests: every process a test starts is stopped in teardown."""

from __future__ import annotations

import pytest


@pytest.fixture
def processes():
    """Daemons and subscribers a test starts; all stopped afterwards."""
    started: list = []
    yield started
    for proc in reversed(started):
        try:
            proc.close() if hasattr(proc, "close") else proc.stop()
        except Exception:  # noqa: BLE001 - stop the rest anyway
            pass
