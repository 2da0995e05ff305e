"""The SMTP (and LMTP) listener: aiosmtpd, with the gateway's policy.

Thin on purpose: :class:`InboundHandler` answers RCPT with the recipient
policy and DATA with whatever the ``accept`` callback (the daemon: spool,
then hand-off) says. The checks that need no socket live in
:mod:`gateways.email.protocol`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from gateways.email import compat_aiosmtpd
from gateways.email.compat_aiosmtpd import PathParserHook
from gateways.email.data_section import read_data_section
from gateways.email.protocol import Envelope, RecipientPolicy, line_ending_problem

log = logging.getLogger("gateway.email")

#: What the daemon does with a message: returns the SMTP status line.
AcceptCallback = Callable[[bytes, Envelope], Awaitable[str]]


class InboundHandler:
    """aiosmtpd hooks: recipient policy, limits, smuggling check, accept.

    Args:
        policy: which recipients are accepted.
        accept: called with each complete message; its status line is the answer.
        max_recipients: recipients per transaction.
    """

    def __init__(self, policy: RecipientPolicy, accept: AcceptCallback, max_recipients: int) -> None:
        self.policy = policy
        self.accept = accept
        self.max_recipients = max_recipients

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        if not self.policy.accepts(address):
            return f"550 5.1.1 <{address}>: recipient not accepted here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content
        problem = line_ending_problem(raw)
        if problem is not None:
            log.warning("refused message from %s: %s", _peer(session), problem)
            return f"550 5.6.11 {problem}"
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        status = await self.accept(raw, Envelope(
            mail_from=envelope.mail_from if envelope.mail_from not in (None, "<>") else "",
            rcpt_to=list(envelope.rcpt_tos),
            peer=_peer(session),
            helo=session.host_name,
            tls=session.ssl is not None,
            auth=login.decode("utf-8", "replace") if login else None,
        ))
        if isinstance(server, LMTP):  # LMTP answers once per recipient
            return "\r\n".join([status] * len(envelope.rcpt_tos))
        return status

    async def handle_exception(self, error: Exception) -> str:
        log.exception("SMTP session failed: %s", error)
        return "421 4.3.0 Internal error, try again later"


def _peer(session: Any) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


class _Limits:
    """Connection counting shared by every session of a listener."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.active: set[int] = set()


#: ``<local@domain>`` in its plain form (dot-atoms, RFC 5321 4.1.2), then whatever follows.
#: Blanks after the path are dropped, as the full parse does; a comment there is left to it.
_PLAIN_PATH = re.compile(
    r"[ \t]*+<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*))>[ \t]*+(?![(])(.*)", re.DOTALL)


class _SessionMixin(PathParserHook):
    """Enhanced status codes for aiosmtpd's built-in size answers, counting, a fast path."""

    limits: _Limits
    local_part_limit: int

    def parse_path(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd builds a typing.Protocol class on every call before the full RFC 5322
        # parse: most of the CPU of MAIL and RCPT. A plain <local@domain> path parses to
        # the same address and rest (tests/email/test_smtp_addresses.py compares them).
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is None:
            return super().parse_path(arg)
        address, rest = plain.group(1), plain.group(2)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's DATA, with the section read in bulk (gateways/email/data_section.py).
        if not compat_aiosmtpd.hands_raw_data(self):  # type: ignore[arg-type]
            return await super().smtp_DATA(arg)  # type: ignore[misc]
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):  # type: ignore[attr-defined]
            return
        envelope = self.envelope  # type: ignore[attr-defined]
        if not envelope.rcpt_tos:
            return await self.push("503 Error: need RCPT command")
        if arg:
            return await self.push("501 Syntax: DATA")
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            section = await read_data_section(compat_aiosmtpd.stream_reader(self),  # type: ignore[arg-type]
                                              self.data_size_limit,  # type: ignore[attr-defined]
                                              self.line_length_limit)  # type: ignore[attr-defined]
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            compat_aiosmtpd.close_connection(self)  # type: ignore[arg-type]
            raise
        except asyncio.IncompleteReadError:  # EOF before the end of the section
            log.info("connection closed during DATA")
            compat_aiosmtpd.close_connection(self)  # type: ignore[arg-type]
            return
        if section.refusal is not None:
            compat_aiosmtpd.end_transaction(self)  # type: ignore[arg-type]
            return await self.push(section.refusal)
        envelope.content = envelope.original_content = section.content
        status = await compat_aiosmtpd.call_data_hook(self)  # type: ignore[arg-type]
        compat_aiosmtpd.end_transaction(self)  # type: ignore[arg-type]
        await self.push("250 OK" if status is MISSING else status)

    async def push(self, status: Any) -> None:
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        if text.startswith("552 ") and not text.startswith("552 5."):
            status = "552 5.3.4 Message size exceeds fixed maximum message size"
        await super().push(status)  # type: ignore[misc]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = id(self) not in self.limits.active
        if first and len(self.limits.active) >= self.limits.max_connections:
            transport.write(b"421 4.3.2 Too many connections, try again later\r\n")
            transport.close()
            return
        self.limits.active.add(id(self))
        super().connection_made(transport)  # type: ignore[misc]

    def eof_received(self) -> bool | None:
        super().eof_received()  # type: ignore[misc]
        # aiosmtpd stops the session at EOF but may keep the transport half-open;
        # under uvloop it then never closes, and its connection slot leaks.
        return False

    def connection_lost(self, error: Exception | None) -> None:
        if id(self) not in self.limits.active:
            return
        self.limits.active.discard(id(self))
        super().connection_lost(error)  # type: ignore[misc]


class GatewaySMTP(_SessionMixin, SMTP):
    """aiosmtpd's SMTP session with the gateway's answers."""


class GatewayLMTP(_SessionMixin, LMTP):
    """aiosmtpd's LMTP session with the gateway's answers."""


def load_credentials(users: dict[str, str], path: str | None) -> dict[str, str]:
    """AUTH credentials from the config mapping and a ``user:password`` file."""
    credentials = dict(users)
    if path:
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if not sep:
                raise ValueError(f"{path}:{number}: expected user:password")
            credentials[user] = password
    return credentials


class Authenticator:
    """Checks AUTH PLAIN/LOGIN against fixed credentials.

    Args:
        credentials: user -> password.
    """

    def __init__(self, credentials: dict[str, str]) -> None:
        self.credentials = credentials

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        expected = self.credentials.get(user)
        ok = expected is not None and hmac.compare_digest(expected.encode(), auth_data.password)
        if not ok:
            log.warning("AUTH failed for %r from %s", user, _peer(session))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context for STARTTLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def start_listener(host: str, port: int, handler: InboundHandler, *, lmtp: bool = False,
                         hostname: str | None, max_message_size: int, timeout: float,
                         max_connections: int, tls: ssl.SSLContext | None, require_starttls: bool,
                         authenticator: Authenticator | None, auth_required: bool) -> asyncio.Server:
    """Listen on ``host:port`` with a session per connection."""
    limits = _Limits(max_connections)
    base = GatewayLMTP if lmtp else GatewaySMTP
    session_class = type(base.__name__, (base,), {"limits": limits})
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return session_class(
            handler,
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            hostname=hostname or None,
            tls_context=tls,
            require_starttls=require_starttls,
            timeout=timeout,
            authenticator=authenticator,
            auth_required=auth_required,
            auth_require_tls=True,
            loop=loop,
        )

    return await loop.create_server(factory, host, port)
