"""``gateway worker``: the Django project's consumers for the configured channels.

For now this runs Django Channels' own ``runworker`` with the Django project
and channels taken from the YAML, so workers and gateways share one file.
"""

from __future__ import annotations

import os
import sys

from gateways.core import registry
from gateways.core.config import Config


def worker_channels(config: Config) -> list[str]:
    """Every channel the configured gateways route to, plus ``django.channels``."""
    channels = list(config.django.channels) if config.django else []
    for name, section in config.sections.items():
        channels.extend(registry.gateway_class(name).consumer_channels(section))
    return list(dict.fromkeys(channels))


def prepare_django(config: Config) -> None:
    """Put the project on ``sys.path`` and point Django at its settings and this file."""
    if config.django is None:
        raise SystemExit(f"{config.path}: no `django:` section naming the settings module")
    for entry in reversed(config.django.path):
        sys.path.insert(0, str(config.resolve(entry)))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", config.django.settings)
    os.environ.setdefault("GATEWAY_CONFIG", str(config.path))


def run_worker(config: Config, channels: list[str]) -> int:
    """Run ``runworker`` for ``channels`` (default: :func:`worker_channels`)."""
    prepare_django(config)
    channels = channels or worker_channels(config)
    if not channels:
        raise SystemExit(f"{config.path}: no channels to consume")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("runworker", *channels)
    return 0
