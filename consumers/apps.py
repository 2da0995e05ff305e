"""The Django app of the gateways: add ``"consumers"`` to ``INSTALLED_APPS``.

It registers system checks (tag ``gateways``) that validate the gateway YAML
named by the ``GATEWAY_CONFIG`` setting, so ``manage.py check`` (and every
command that runs the checks: ``runserver``, ``migrate``...) reports the same
``file:line: key.path: problem`` lines as ``gateway check --config FILE``::

    INSTALLED_APPS = [..., "channels", "consumers"]
    GATEWAY_CONFIG = BASE_DIR / "gateway.yaml"
"""

from __future__ import annotations

from typing import Any, Sequence

from django.apps import AppConfig
from django.conf import settings
from django.core import checks

#: The tag of the checks: ``manage.py check --tag gateways`` runs only these.
TAG = "gateways"


class GatewayProblem(checks.Error):
    """A problem of the gateway YAML, printed exactly as ``gateway check`` prints it.

    Django prints a check message as ``obj: (id) message``; the gateway's
    line already says where the problem is, so it is printed alone. The id
    (``gateways.E001``) still works in ``SILENCED_SYSTEM_CHECKS``. (Django
    sorts the lines it prints alphabetically, so their order may differ.)
    """

    def __str__(self) -> str:
        return self.msg


def check_gateway_config(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Validate the file ``settings.GATEWAY_CONFIG`` names, as ``gateway check`` does.

    Returns one :class:`GatewayProblem` per problem (id ``gateways.E001``),
    or a warning (``gateways.W001``) when the setting is missing.
    """
    if app_configs is not None and not any(c.name == GatewaysAppConfig.name for c in app_configs):
        return []
    path = getattr(settings, "GATEWAY_CONFIG", None)
    if not path:
        return [checks.Warning(
            "GATEWAY_CONFIG is not set, so the gateway configuration is not checked",
            hint="set GATEWAY_CONFIG in the settings to the gateway YAML file, the one "
                 "`gateway check --config FILE` validates",
            id="gateways.W001",
        )]
    from gateways.core.cli import config_problems

    return [GatewayProblem(line, id="gateways.E001") for line in config_problems(str(path))]


class GatewaysAppConfig(AppConfig):
    """The ``consumers`` package as a Django app (label ``channels_gateways``)."""

    name = "consumers"
    label = "channels_gateways"
    verbose_name = "Channels gateways"

    def ready(self) -> None:
        checks.register(check_gateway_config, TAG)

