"""Fixtures of the email tests: Django for in-process consumer tests, and the
real stack (gateway subprocess, relay, runworker) in email_stack.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def django_demo():
    """The demo project's settings, with an in-memory layer (the test kit runs consumers on a layer of its own)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    ours = "GATEWAY_LAYER_URL" not in os.environ
    if ours:
        os.environ["GATEWAY_LAYER_URL"] = "memory://"
    import django

    try:
        django.setup()
    finally:
        if ours:  # subprocesses (runworker) must not inherit it
            del os.environ["GATEWAY_LAYER_URL"]
