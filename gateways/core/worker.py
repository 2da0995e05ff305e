"""``gateway worker``: the Django project's consumers for the configured channels.

It runs the project's ASGI application the way Django Channels' ``runworker``
does (one application instance per channel), with the Django project and the
channels taken from the YAML, and one difference: a channel-layer error does
not end the worker. Stock ``runworker`` exits when Redis goes away; this one
logs, backs off and listens again.
"""

from __future__ import annotations

import logging
import os
import sys

from channels.worker import Worker

from gateways.core import registry
from gateways.core.backoff import Backoff
from gateways.core.config import Config
from gateways.core.daemon import LAYER_ERRORS

log = logging.getLogger("gateway.worker")


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

    django.setup()
    from channels.layers import get_channel_layer
    from channels.routing import get_default_application

    log.info("Running worker for channels %s", channels)
    ResilientWorker(get_default_application(), channels, get_channel_layer()).run()
    return 0


class ResilientWorker(Worker):
    """Channels' worker whose listeners survive channel-layer outages."""

    async def listener(self, channel: str) -> None:
        backoff = Backoff(initial=0.2, maximum=10.0)
        while True:
            try:
                await super().listener(channel)
            except LAYER_ERRORS as exc:
                log.warning("receiving on %s failed (%s: %s); retrying", channel, type(exc).__name__, exc)
                await backoff.wait()
