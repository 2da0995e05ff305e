"""The message specs: one prose spec (``<protocol>.md``) and one JSON schema
(``<protocol>.schema.json``) per protocol.

This directory is the one source of truth for message formats and is shipped
inside the installed package, so gateways and consumers find the schemas
with :mod:`importlib.resources` wherever the package is installed (see
:func:`gateways.core.specs.load_schema`).
"""

from __future__ import annotations

import importlib
from types import ModuleType


def routing(protocol: str) -> ModuleType | None:
    """``protocol_specs.<protocol>`` when it states the protocol's routing for
    ``gateway worker``, else None (then the gateway class states it).

    Such a module has ``consumer_channels(section) -> list[str]`` (the
    channels the gateway sends to, which Django workers consume) and
    ``conversation_key(message) -> Hashable | None`` (a message's
    conversation, the unit of ordering its spec states). It imports none of
    the gateway's libraries, so a worker that runs only Django consumers
    needs no protocol extra.

    Args:
        protocol: a registered protocol name, e.g. ``mqtt``.
    """
    if not protocol.isidentifier():
        return None
    try:
        module = importlib.import_module(f"{__name__}.{protocol}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{protocol}":
            raise  # the module exists and something it imports is missing: say so
        return None
    if callable(getattr(module, "consumer_channels", None)) and callable(getattr(module, "conversation_key", None)):
        return module
    return None
