"""The installed protocols, found through the ``gateways.protocols`` entry points.

The core names no protocol: each protocol package registers its gateway class
in ``pyproject.toml``, and the class names its section dataclass.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateways.core.daemon import Gateway

GROUP = "gateways.protocols"


@cache
def protocol_names() -> tuple[str, ...]:
    """Names of the installed protocols, sorted."""
    return tuple(sorted(ep.name for ep in entry_points(group=GROUP)))


@cache
def gateway_class(name: str) -> type["Gateway"]:
    """The gateway class registered for protocol ``name``."""
    (ep,) = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    return ep.load()


def section_classes() -> dict[str, type]:
    """Protocol name -> its configuration section dataclass.

    A protocol whose daemon module does not exist in this checkout is left
    out; any other import error is raised, not hidden.
    """
    classes = {}
    for ep in entry_points(group=GROUP):
        module = ep.value.partition(":")[0]
        try:
            classes[ep.name] = gateway_class(ep.name).section_class
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
    return dict(sorted(classes.items()))
