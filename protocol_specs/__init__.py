"""The message specs: one prose spec (``<protocol>.md``) and one JSON schema
(``<protocol>.schema.json``) per protocol.

This directory is the one source of truth for message formats and is shipped
inside the installed package, so gateways and consumers find the schemas
with :mod:`importlib.resources` wherever the package is installed (see
:func:`gateways.core.specs.load_schema`).
"""
