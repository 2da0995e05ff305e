"""The test tiers (tests/tiers.py): each test is in exactly one, and a test that
does what its tier rules out fails, even when the code under test swallows it."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from servers import Daemon
from tiers import TIERS, TierViolation


def test_every_test_of_this_run_is_in_exactly_one_tier(request):
    for item in request.session.items:
        tiers = [mark.name for mark in item.iter_markers() if mark.name in TIERS]
        assert len(tiers) == 1, f"{item.nodeid}: {tiers}"


def test_a_unit_test_can_neither_connect_nor_bind_nor_start_a_process(request):
    with socket.socket() as sock, pytest.raises(TierViolation, match="mark it integration or e2e"):
        sock.connect(("127.0.0.1", 9))
    with socket.socket() as sock, pytest.raises(TierViolation):
        sock.bind(("127.0.0.1", 0))
    with pytest.raises(TierViolation):
        subprocess.run(["true"])
    assert len(request.node.tier_violations) == 3
    request.node.tier_violations.clear()  # seen here: the guard's own check must not fail this test


@pytest.mark.integration
def test_an_integration_test_cannot_start_a_gateway_or_worker_process(request):
    with pytest.raises(TierViolation, match="mark it e2e"):
        Daemon("worker", [sys.executable, "-c", "pass"])
    assert len(request.node.tier_violations) == 1
    request.node.tier_violations.clear()
