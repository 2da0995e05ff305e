"""The Django-side tests use the protocol test stacks: their helper modules go on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for stack in ("email", "mqtt", "django"):  # email_stack.py, mqtt_stack.py, django_stack.py
    if str(TESTS / stack) not in sys.path:
        sys.path.insert(0, str(TESTS / stack))

from django_stack import django_settings_for  # noqa: E402


@pytest.fixture
def email_gateway(redis_server, tmp_path):
    """A real `gateway email` relaying into a Maildir; Django points at it. Yields (config, maildir/new)."""
    from email_stack import start_gateway, write_config

    config, port = write_config(tmp_path, redis_server.url, relay_retry_max=0.5)
    daemon = start_gateway(config, port)
    with django_settings_for(config, EMAIL_BACKEND="consumers.mail.GatewayEmailBackend"):
        yield config, tmp_path / "maildir" / "new"
    daemon.stop()
