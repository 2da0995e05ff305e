"""``gateway email``: SMTP in as ``email.receive``, ``email.send`` out through a relay.

Inbound, a message is answered 250 only once it is in the durable spool;
:class:`~gateways.email.handoff.Handoff` then hands it to the layer until a
consumer acknowledges it. Outbound, each ``email.send`` is delivered through
the relay with retries on transient failures, and the outcome goes to the
message's ``reply_channel``.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
from typing import Any

from gateways.core.backoff import Backoff
from gateways.core.config import Config, split_host_port
from gateways.core.gateway import Gateway, InvalidMessage
from gateways.core.runtime import Runtime
from gateways.email.config import EmailSection
from gateways.email.handoff import Handoff
from gateways.email.parsing import ParserProcess
from gateways.email.protocol import (
    Envelope,
    Outbound,
    OutboundError,
    RecipientPolicy,
    Route,
    Router,
    build_outbound,
    failed_message,
    header_subject,
    refused_author,
    sender_allowed,
    sent_message,
)
from gateways.email.relay import RelayError, build_relay
from gateways.email.smtp import Authenticator, InboundHandler, load_credentials, start_listener, tls_context
from gateways.email.spool import GroupCommit, Spool, SpoolEntry, new_id

#: Spooled messages not yet acknowledged beyond which new mail gets 452.
MAX_PENDING = 100_000


class EmailGateway(Gateway, protocol="email", section_class=EmailSection):
    """The email gateway daemon (its arguments are :class:`Gateway`'s)."""

    def __init__(self, runtime: Runtime, section: EmailSection) -> None:
        super().__init__(runtime, section)
        config = runtime.config
        self.spool = Spool(config.resolve(section.spool))
        self.spool_writer = GroupCommit(self.spool)
        self.parser = ParserProcess()
        self.router = Router([Route.compile(r.channel, r.address, r.domain, r.subject) for r in section.routes],
                             section.default_channel)
        self.policy = RecipientPolicy(section.domains, section.addresses)
        self.relay = build_relay(section.relay, config.path.parent, section.relay_timeout,
                                 section.relay_verify_tls)
        self.senders = section.allowed_senders()
        self.handoff: Handoff | None = None
        self.servers: list[asyncio.Server] = []
        self._sending: set[asyncio.Task] = set()
        self._send_slots = asyncio.Semaphore(section.outbound_concurrency)
        self._accepting = True
        #: The name in the SMTP greeting and the domain of the Message-IDs it makes; found in start().
        self.hostname = section.hostname

    # -- what the core asks ---------------------------------------------------

    @classmethod
    def consumer_channels(cls, section: EmailSection) -> list[str]:
        """The route channels and the default channel (stated next to the spec)."""
        from protocol_specs.email import consumer_channels

        return consumer_channels(section)

    @classmethod
    def conversation_key(cls, message: dict[str, Any]) -> Any:
        """None: each message is its own conversation (protocol_specs/email.md), so
        ``gateway worker`` handles them concurrently. Every email.receive carries the
        same reply_channel, which as a key would serialise all mail."""
        from protocol_specs.email import conversation_key

        return conversation_key(message)

    @classmethod
    def stack_services(cls, section: EmailSection, config: Config) -> list:
        """Nothing to start: the relay is remote or a development relay."""
        return []

    def uses_process_channel(self) -> bool:
        return True  # acks and replies come back on the reply channel

    async def start(self) -> None:
        section = self.section
        await asyncio.to_thread(self.spool.open)
        await self.parser.start()
        reply_channel = await self.runtime.new_channel()
        self.handoff = Handoff(self.runtime, self.spool, reply_channel, section.dead_letter_channel,
                               section.ack_timeout, section.max_attempts, linger=section.handoff_linger,
                               parse=self.parser.parse)
        recovered = 0
        for entry in await asyncio.to_thread(lambda: list(self.spool.pending())):
            entry.raw = None  # read again at hand-off time: keeps memory flat
            self.handoff.add(entry)
            recovered += 1
        if recovered:
            self.log.info("spool %s: %d message(s) from an earlier run to hand off", self.spool.root, recovered)
        self.handoff.start()
        tls = tls_context(section.tls_cert, section.tls_key) if section.tls_cert and section.tls_key else None
        credentials = load_credentials(section.auth_users, section.auth_file and
                                       str(self.runtime.config.resolve(section.auth_file)))
        authenticator = Authenticator(credentials) if credentials else None
        # Once, here: socket.getfqdn() may block on DNS, and the pure modules take the name as an argument.
        self.hostname = section.hostname or await asyncio.to_thread(socket.getfqdn)
        handler = InboundHandler(self.policy, self.accept, section.max_recipients)
        options: dict[str, Any] = dict(
            hostname=self.hostname, max_message_size=section.max_message_size,
            timeout=section.timeout, max_connections=section.max_connections, tls=tls,
            require_starttls=section.require_starttls, authenticator=authenticator,
            auth_required=section.auth_required,
        )
        host, port = split_host_port(section.listen)
        self.servers.append(await start_listener(host, port, handler, **options))
        self.log.info("SMTP on %s for %s", section.listen, ", ".join(section.domains))
        if section.lmtp_listen:
            host, port = split_host_port(section.lmtp_listen)
            self.servers.append(await start_listener(host, port, handler, lmtp=True, **options))
            self.log.info("LMTP on %s", section.lmtp_listen)

    # -- inbound ----------------------------------------------------------------

    async def accept(self, raw: bytes, envelope: Envelope) -> str:
        """Spool a complete message and queue its hand-off; return the SMTP answer."""
        assert self.handoff is not None
        if not self._accepting:
            return "421 4.3.2 Shutting down, try again later"
        if self.handoff.pending >= MAX_PENDING:
            self.runtime.metrics.inc("email_refused_total", "messages answered 4xx", reason="spool full")
            return "452 4.3.1 Too many messages waiting for consumers, try again later"
        subject = header_subject(raw) if self.router.needs_subject else ""
        deliveries = self.router.deliveries(envelope.rcpt_to, subject)
        entry = SpoolEntry(new_id(), envelope.as_dict(),
                           [{"channel": d.channel, "recipients": d.recipients, "kwargs": d.kwargs}
                            for d in deliveries], raw)
        try:
            await self.spool_writer.write(entry)
        except OSError as exc:
            self.runtime.metrics.inc("email_refused_total", "messages answered 4xx", reason="spool")
            self.log.error("spool %s cannot be written: %s", self.spool.root, exc)
            return "451 4.3.0 Mail spool unavailable, try again later"
        self.runtime.metrics.inc("email_accepted_total", "messages answered 250")
        # The parse is asked by the hand-off, after the 250: out of this
        # message's round trip, and for all of a linger's messages at once.
        self.handoff.add(entry)
        return f"250 2.0.0 OK queued as {entry.id}"

    # -- consumers' messages -------------------------------------------------------

    async def handle(self, channel: str, message: dict[str, Any]) -> None:
        assert self.handoff is not None
        if message["type"] == "email.ack":
            for delivery_id in [message["id"], *message.get("ids", ())]:
                if not await self.handoff.ack(delivery_id):
                    self.log.debug("ack for %s, which is not waiting (already acknowledged?)", delivery_id)
            return
        if message["type"] != "email.send":
            raise InvalidMessage(f"{message['type']} is not sent to the gateway")
        try:
            outbound = build_outbound(message, domain=self.hostname)
        except OutboundError as exc:
            raise InvalidMessage(str(exc)) from exc
        await self._send_slots.acquire()
        task = self.runtime.spawn(self._send(message, outbound), f"email.send {message.get('id')}")
        self._sending.add(task)
        task.add_done_callback(self._send_done)

    def _send_done(self, task: asyncio.Task) -> None:
        self._sending.discard(task)
        self._send_slots.release()

    def failure_result(self, message: dict[str, Any], problem: str) -> dict[str, Any] | None:
        """``email.failed`` for an invalid ``email.send``; an invalid ``email.ack`` has no result."""
        if message.get("type") != "email.send":
            return None
        return failed_message(message, f"invalid email.send: {problem}")

    async def _send(self, message: dict[str, Any], outbound: Outbound) -> None:
        section = self.section
        refused = refused_author(outbound, self.senders)
        if refused is None and not sender_allowed(_header_address(message["from"]), self.senders):
            refused = f"sender {message['from']!r} is not allowed (email.senders)"
        if refused is not None:
            self.runtime.metrics.inc("email_send_failed_total", "email.send not delivered", reason="sender")
            self.log.warning("email.send %s refused: %s", message.get("id"), refused)
            await self._report(message, failed_message(message, refused, recipients=outbound.recipients))
            return
        backoff = Backoff(section.relay_retry_initial, section.relay_retry_max)
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    delivered = await self.relay.deliver(outbound)
                except RelayError as exc:
                    if exc.transient and attempt < section.relay_attempts:
                        self.log.warning("relay attempt %d of %s failed (%s); retrying", attempt,
                                         outbound.message_id, exc)
                        await backoff.wait()
                        continue
                    self.runtime.metrics.inc("email_send_failed_total", "email.send not delivered",
                                             reason="transient" if exc.transient else "permanent")
                    self.log.error("email.send %s not delivered after %d attempt(s): %s",
                                   outbound.message_id, attempt, exc)
                    await self._report(message, failed_message(
                        message, str(exc), code=exc.code, permanent=not exc.transient,
                        attempts=attempt, recipients=outbound.recipients))
                    return
                break
        except asyncio.CancelledError:
            # Shutting down during a retry: say so rather than drop it silently.
            await asyncio.shield(self._report(message, failed_message(
                message, "gateway stopped before the relay accepted the message", permanent=False,
                attempts=attempt, recipients=outbound.recipients)))
            raise
        self.runtime.metrics.inc("email_sent_total", "email.send delivered to the relay")
        await self._report(message, sent_message(
            message, message_id=outbound.message_id, recipients=outbound.recipients,
            response=delivered.response, attempts=attempt, refused=delivered.refused))

    async def _report(self, send: dict[str, Any], outcome: dict[str, Any]) -> None:
        if outcome["type"] == "email.failed":
            self.log.warning("email.send %s failed: %s", outcome.get("id"), outcome["error"])
        await self.runtime.report(send, outcome)

    # -- lifecycle ---------------------------------------------------------------

    async def stop_accepting(self) -> None:
        self._accepting = False
        for server in self.servers:
            server.close()

    async def drain(self) -> None:
        while self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*list(self._sending), return_exceptions=True)
        for server in self.servers:
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass
        await asyncio.to_thread(self.spool.close)
        await self.parser.close()

    def health(self) -> tuple[bool, dict[str, Any]]:
        pending = self.handoff.pending if self.handoff else 0
        return True, {"spool_pending": pending, "sending": len(self._sending)}


def _header_address(value: str) -> str:
    return email.utils.parseaddr(value)[1]
