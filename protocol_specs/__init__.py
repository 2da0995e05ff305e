"""The message specs: one prose spec (``<protocol>.md``) and one JSON schema
(``<protocol>.schema.json``) per protocol.

This directory is the one source of truth for the built-in protocols'
message formats and is shipped inside the installed package, so gateways and
consumers find the schemas with :mod:`importlib.resources` wherever the
package is installed (see :func:`gateways.core.specs.load_schema`).

Every protocol, built-in or plug-in, names its spec module in the
``gateways.specs`` entry-point group (``websocket = "protocol_specs.websocket"``,
``line = "line_gateway.spec"``): the spec and schema files sit in that
module's package, and the module may state the protocol's routing
(:func:`routing`).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from types import ModuleType

#: The entry-point group naming each protocol's spec module.
SPECS_GROUP = "gateways.specs"


def spec_module(protocol: str) -> ModuleType | None:
    """The spec module of ``protocol``: the one its ``gateways.specs`` entry
    point names, else ``protocol_specs.<protocol>``, else None.

    Args:
        protocol: a protocol name, e.g. ``mqtt``.
    """
    for ep in entry_points(group=SPECS_GROUP):
        if ep.name == protocol:
            return importlib.import_module(ep.value.partition(":")[0])
    if not protocol.isidentifier():
        return None
    try:
        return importlib.import_module(f"{__name__}.{protocol}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{protocol}":
            raise  # the module exists and something it imports is missing: say so
        return None


def routing(protocol: str) -> ModuleType | None:
    """The spec module of ``protocol`` when it states the protocol's routing
    for ``gateway worker``, else None (then the gateway class states it).

    Such a module has ``consumer_channels(section) -> list[str]`` (the
    channels the gateway sends to, which Django workers consume) and
    ``conversation_key(message) -> Hashable | None`` (a message's
    conversation, the unit of ordering its spec states). It imports none of
    the gateway's libraries, so a worker that runs only Django consumers
    needs no protocol extra.

    Args:
        protocol: a registered protocol name, e.g. ``mqtt``.
    """
    module = spec_module(protocol)
    if module is None:
        return None
    if callable(getattr(module, "consumer_channels", None)) and callable(getattr(module, "conversation_key", None)):
        return module
    return None
