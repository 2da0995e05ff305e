"""The plug-in contract: the :class:`Gateway` base class a protocol subclasses.

A protocol's gateway does its I/O and translation; the core
(:mod:`gateways.core.daemon`) runs it, validates consumers' messages before
handing them to :meth:`Gateway.handle`, answers invalid ones through
:meth:`Gateway.answer_invalid`, reports results (:meth:`Runtime.report`) and
drains it. :class:`Service` and :class:`StackUnavailable` are what a gateway
tells ``gateway up`` about the processes it needs beside it. The whole
contract is described in docs/gateway-contract.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources.abc import Traversable
from typing import Any, ClassVar

from gateways.core.config import Config, GatewaySection
from gateways.core.runtime import Runtime
from gateways.core.specs import SPECS_DIR, InvalidMessage

__all__ = ["Gateway", "InvalidMessage", "Service", "StackUnavailable"]


@dataclass
class Service:
    """A process `gateway up` runs beside a gateway (a local broker, say).

    Args:
        name: the prefix of its log lines.
        argv: the command.
        port: a TCP port on 127.0.0.1 to wait for before starting the gateway.
    """

    name: str
    argv: list[str]
    port: int | None = None


class StackUnavailable(Exception):
    """A gateway `gateway up` cannot run on this machine; the message says in
    one line what to do to add it."""


class Gateway:
    """Base class of a protocol's daemon; subclasses do the protocol's I/O.

    A subclass names its protocol and section (and, outside this
    distribution, where its schema is) in the class statement::

        class ChatGateway(Gateway, protocol="chat", section_class=ChatSection,
                          specs_dir=files("chat_gateway.specs")):
            ...

    Args:
        runtime: the core services (layer, metrics, logging, tasks).
        section: the protocol's configuration section.

    Class attributes:
        protocol: the protocol name, as in the CLI and the YAML.
        section_class: the section dataclass (a :class:`GatewaySection`).
        specs_dir: the directory holding ``<protocol>.schema.json`` (and the
            spec); by default the ``protocol_specs`` package.
    """

    protocol: ClassVar[str]
    section_class: ClassVar[type[GatewaySection]]
    specs_dir: ClassVar[Traversable] = SPECS_DIR

    def __init_subclass__(cls, protocol: str | None = None, section_class: type[GatewaySection] | None = None,
                          specs_dir: Traversable | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if protocol is not None:
            cls.protocol = protocol
        if section_class is not None:
            cls.section_class = section_class
        if specs_dir is not None:
            cls.specs_dir = specs_dir

    def __init__(self, runtime: Runtime, section: Any) -> None:
        self.runtime = runtime
        self.section = section
        self.log = runtime.log

    @classmethod
    def apply_overrides(cls, section: Any, listen: str | None) -> None:
        """Apply the CLI's ``--listen HOST:PORT`` to the section."""
        if listen is not None:
            if not hasattr(section, "listen"):
                raise SystemExit(f"gateway {cls.protocol}: --listen does not apply to this protocol")
            section.listen = listen

    @classmethod
    def consumer_channels(cls, section: Any) -> list[str]:
        """Channels this gateway sends to, which Django workers must consume."""
        return []

    @classmethod
    def conversation_key(cls, message: dict[str, Any]) -> Any:
        """The conversation (unit of ordering, as the protocol's spec states) of a
        message this gateway emits: ``gateway worker`` handles the messages of
        one conversation in order and different conversations concurrently.
        Return a hashable, or ``None`` for a message with no order to keep.
        The default is the message's ``reply_channel``."""
        return message.get("reply_channel")

    @classmethod
    def stack_services(cls, section: Any, config: Config) -> list[Service]:
        """Processes `gateway up` starts before this gateway; raise
        :class:`StackUnavailable` when the gateway cannot run here."""
        return []

    def send_channels(self) -> list[str]:
        """Named channels consumers send this gateway work on (e.g. ``email.send``).

        The default is the section's ``send_channel`` key, when it has one.
        """
        channel = getattr(self.section, "send_channel", None)
        return [channel] if channel else []

    def uses_process_channel(self) -> bool:
        """Whether consumers reply on this process's reply channels."""
        return False

    async def start(self) -> None:
        """Connect or start listening."""

    async def handle(self, channel: str, message: dict[str, Any]) -> None:
        """Act on a message from a consumer, received on ``channel``.

        The core calls it only with messages its schema accepts. Raise
        :class:`InvalidMessage` for one the protocol still cannot act on: the
        core then logs and counts it and calls :meth:`answer_invalid`.
        """
        raise NotImplementedError

    def failure_result(self, message: dict[str, Any], problem: str) -> dict[str, Any] | None:
        """The protocol's failure result for a consumer message it refuses
        (``email.failed``, ``mqtt.result`` with ``ok`` false...), or None
        when the protocol has no result for that message."""
        return None

    async def answer_invalid(self, channel: str, message: Any, problem: str) -> None:
        """Answer a consumer message that is invalid, after the core logged and counted it.

        ``message`` may be anything (not even a dict). The default sends
        :meth:`failure_result` to the message's ``reply_channel``, when both exist.
        """
        if isinstance(message, dict):
            result = self.failure_result(message, problem)
            if result is not None:
                await self.runtime.report(message, result)

    async def stop_accepting(self) -> None:
        """Stop taking new connections or messages from the outside."""

    async def drain(self) -> None:
        """Wait for the protocol's work in flight (bounded by the grace period)."""

    async def close(self) -> None:
        """Close connections the protocol's way."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Protocol health for ``/healthz``."""
        return True, {}
