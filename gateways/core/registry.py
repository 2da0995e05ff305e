"""The installed protocols, found through entry points.

The core names no protocol: each protocol package registers, in
``pyproject.toml``,

- its gateway class in the ``gateways.protocols`` group (the class names its
  section dataclass), and
- its section dataclass in the ``gateways.sections`` group (optional).

A gateway's own libraries (aiosmtpd, aiomqtt, slack_sdk...) come with the
package's extra named after the protocol (``channels-gateways[mqtt]``), so a
protocol may be registered but not runnable here. The section is registered
on its own because its module needs no extra: ``gateway check`` still reads
the section and then says which extra to install, where importing the
gateway class would only fail with the missing module's name.

This module imports nothing of the core: :mod:`gateways.core.config` asks it
for the section classes, and the gateway classes it loads import the config.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable

GROUP = "gateways.protocols"
SECTIONS_GROUP = "gateways.sections"


class MissingExtra(ImportError):
    """A registered protocol whose gateway needs a library that is not installed.

    ``str()`` says what to install, e.g. ``the mqtt gateway needs its extra:
    pip install 'channels-gateways[mqtt]' (missing module aiomqtt)``.

    Args:
        protocol: the protocol name.
        module: the module that could not be imported.
        requirement: what to install (``channels-gateways[mqtt]``), or None
            when the distribution declares no extra for the protocol.
    """

    def __init__(self, protocol: str, module: str, requirement: str | None) -> None:
        self.protocol = protocol
        self.module = module
        self.requirement = requirement
        if requirement:
            text = (f"the {protocol} gateway needs its extra: pip install '{requirement}' "
                    f"(missing module {module})")
        else:
            text = f"the {protocol} gateway needs the module {module}, which is not installed"
        super().__init__(text, name=module)


def _entry_point(group: str, name: str) -> EntryPoint | None:
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    return found[0] if found else None


def _requirement(ep: EntryPoint, protocol: str) -> str | None:
    """``<distribution>[<protocol>]`` when the distribution has that extra."""
    dist = ep.dist
    if dist is None:
        return None
    extras = dist.metadata.get_all("Provides-Extra") or []
    return f"{dist.metadata['Name']}[{protocol}]" if protocol in extras else None


def _load(ep: EntryPoint, protocol: str) -> Any:
    """``ep.load()``, with a missing third-party module as :class:`MissingExtra`.

    A missing module of the protocol's own package (a checkout without that
    protocol's files) is re-raised unchanged.
    """
    try:
        return ep.load()
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        own = ep.module.partition(".")[0]
        if not missing or missing.partition(".")[0] == own:
            raise
        raise MissingExtra(protocol, missing, _requirement(ep, protocol)) from exc


@cache
def protocol_names() -> tuple[str, ...]:
    """Names of the registered protocols, sorted (runnable here or not)."""
    return tuple(sorted(ep.name for ep in entry_points(group=GROUP)))


@cache
def gateway_class(name: str) -> type[Any]:
    """The gateway class registered for protocol ``name``: a subclass of
    :class:`gateways.core.gateway.Gateway` (not named in the annotation, as
    importing it here would close a circle through the config).

    Raises:
        MissingExtra: the gateway needs a library that is not installed.
    """
    ep = _entry_point(GROUP, name)
    if ep is None:
        raise LookupError(f"no protocol {name!r} is installed (known: {', '.join(protocol_names())})")
    return _load(ep, name)


def missing_extras(names: Iterable[str]) -> list[MissingExtra]:
    """The protocols among ``names`` whose gateway cannot be imported here, each
    as the :class:`MissingExtra` that says what to install."""
    missing = []
    for name in names:
        try:
            gateway_class(name)
        except MissingExtra as exc:
            missing.append(exc)
    return missing


def _section_class(ep: EntryPoint) -> type | None:
    """The section dataclass of protocol ``ep.name``, or None to leave it out."""
    section = _entry_point(SECTIONS_GROUP, ep.name)
    if section is not None:
        return _load(section, ep.name)
    try:
        return gateway_class(ep.name).section_class
    except MissingExtra:
        return None
    except ModuleNotFoundError as exc:
        # A checkout without this protocol's daemon module.
        if exc.name is not None and ep.module.startswith(exc.name):
            return None
        raise


def section_classes() -> dict[str, type]:
    """Protocol name -> its configuration section dataclass.

    A protocol whose daemon module does not exist in this checkout is left
    out, and so is one that registers no section and whose gateway needs a
    missing extra; any other import error is raised, not hidden.
    """
    classes = {}
    for ep in entry_points(group=GROUP):
        section = _section_class(ep)
        if section is not None:
            classes[ep.name] = section
    return dict(sorted(classes.items()))
