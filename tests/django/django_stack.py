"""Helpers of the Django-side tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.test import override_settings

from gateways.core.layer import channel_layers_setting


def django_settings_for(config: Path, **extra: Any) -> override_settings:
    """Point this process's Django at the gateway YAML ``config``: GATEWAY_CONFIG and its layer."""
    return override_settings(GATEWAY_CONFIG=str(config), CHANNEL_LAYERS=channel_layers_setting(str(config)),
                             **extra)
