"""Message schemas from ``protocol_specs/`` and validation against them.

Each protocol has ``<protocol>.md`` (the prose spec) and
``<protocol>.schema.json`` in the package of its spec module: the module its
``gateways.specs`` entry point names (:func:`protocol_specs.spec_module`),
``protocol_specs`` for the built-in protocols, a plug-in's own package for
a plug-in. The files are read with :mod:`importlib.resources` and found
wherever the package is installed (a wheel, an editable checkout, a zip)::

    {
      "protocol": "websocket",
      "version": "1.0",
      "$defs": {...shared definitions, referenced as "#/$defs/name"...},
      "messages": {"websocket.connect": {<JSON Schema>}, ...}
    }

JSON Schema has no bytes type, so the schemas use the keyword
``"x-bytes": true`` ("this value is bytes"); the validator here knows it, and
``"type": "string"`` never matches bytes. "str or bytes" is written
``{"anyOf": [{"type": "string"}, {"x-bytes": true}]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

import protocol_specs

#: The directory holding every ``<protocol>.md`` and ``<protocol>.schema.json``.
SPECS_DIR: Traversable = files("protocol_specs")

SCHEMA_SUFFIX = ".schema.json"
SPEC_SUFFIX = ".md"


def spec_dir(protocol: str) -> Traversable:
    """The directory holding ``<protocol>.md`` and ``<protocol>.schema.json``:
    the package of the protocol's spec module, else :data:`SPECS_DIR`."""
    module = protocol_specs.spec_module(protocol)
    if module is None or not module.__package__:
        return SPECS_DIR
    return files(module.__package__)


def spec_document(protocol: str) -> str:
    """The prose spec of ``protocol`` (its ``<protocol>.md``)."""
    return (spec_dir(protocol) / f"{protocol}{SPEC_SUFFIX}").read_text(encoding="utf-8")


def schema_protocols(specs_dir: Traversable = SPECS_DIR) -> list[str]:
    """Every protocol that has a schema in ``specs_dir``, sorted."""
    return sorted(entry.name.removesuffix(SCHEMA_SUFFIX) for entry in specs_dir.iterdir()
                  if entry.name.endswith(SCHEMA_SUFFIX))


def _x_bytes(_validator: Any, wanted: bool, instance: Any, _schema: Any):
    if wanted and not isinstance(instance, (bytes, bytearray)):
        yield jsonschema.ValidationError(f"{type(instance).__name__} is not bytes")


_Validator = jsonschema.validators.extend(Draft202012Validator, {"x-bytes": _x_bytes})


class InvalidMessage(ValueError):
    """A message that its protocol's schema rejects; ``str()`` names the problem."""


@dataclass(frozen=True)
class ProtocolSchema:
    """The schemas of every message type of one protocol.

    Args:
        protocol: the protocol name, e.g. ``"websocket"``.
        version: the spec version the schema file declares.
        validators: one validator per message ``type``.
    """

    protocol: str
    version: str
    validators: dict[str, Any]

    @property
    def message_types(self) -> list[str]:
        """Every message type the spec defines."""
        return sorted(self.validators)

    def problem(self, message: Any) -> str | None:
        """Return why ``message`` is invalid, or ``None`` when it is valid."""
        if not isinstance(message, dict):
            return f"message is {type(message).__name__}, not a dict"
        mtype = message.get("type")
        if not isinstance(mtype, str):
            return "message has no string 'type'"
        validator = self.validators.get(mtype)
        if validator is None:
            return f"unknown message type {mtype!r} for protocol {self.protocol!r}"
        error = jsonschema.exceptions.best_match(validator.iter_errors(message))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(message)"
        return f"{mtype}: {where}: {error.message}"

    def validate(self, message: Any) -> None:
        """Raise :class:`InvalidMessage` unless ``message`` is valid."""
        problem = self.problem(message)
        if problem is not None:
            raise InvalidMessage(problem)


@cache
def load_schema(protocol: str, specs_dir: Traversable | None = None) -> ProtocolSchema:
    """Load and compile ``<protocol>.schema.json``.

    Args:
        protocol: the protocol name, e.g. ``"email"``.
        specs_dir: where the schema is (any :class:`pathlib.Path` works
            too). When it is not given, or holds no schema of ``protocol``
            (a plug-in whose gateway class keeps the default directory), the
            package of the protocol's spec module (:func:`spec_dir`).
    """
    name = f"{protocol}{SCHEMA_SUFFIX}"
    path = specs_dir / name if specs_dir is not None else None
    if path is None or not path.is_file():
        path = spec_dir(protocol) / name
    document = json.loads(path.read_text(encoding="utf-8"))
    defs = document.get("$defs", {})
    validators = {}
    for mtype, schema in document["messages"].items():
        full = {"$defs": defs, **schema}
        _Validator.check_schema(full)
        validators[mtype] = _Validator(full)
    return ProtocolSchema(protocol, str(document.get("version", "")), validators)
