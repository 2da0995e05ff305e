"""The aiosmtpd internals the SMTP listener relies on, in one place.

:mod:`gateways.email.smtp` subclasses aiosmtpd's SMTP session to read DATA in
bulk (aiosmtpd awaits each line) and to parse the plain ``<local@domain>`` path
without aiosmtpd's full RFC 5322 parse. aiosmtpd has no public hook for either,
so this module touches these private members of ``aiosmtpd.smtp.SMTP``:

- ``_getaddr(arg)``: the path parser of MAIL and RCPT (see :class:`PathParserHook`);
- ``_decode_data`` and ``_handle_hooks``: whether DATA hands raw bytes to ``handle_DATA``;
- ``_reader`` and ``_writer``: the session's streams;
- ``_set_post_data_state()``: ends the transaction (a fresh envelope);
- ``_call_handler_hook("DATA")``: calls the handler's ``handle_DATA``.

Checked against aiosmtpd 1.4.6; tests/compat/test_compat_aiosmtpd.py fails,
naming this module, when an installed version no longer has one of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP


class PathParserHook:
    """Mixin for an aiosmtpd session: MAIL and RCPT paths are parsed by
    :meth:`parse_path`, which a subclass overrides (aiosmtpd's by default)."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return self.parse_path(arg)

    def parse_path(self, arg: str) -> tuple[str | None, str | None]:
        """``(address, rest of the line)``, or ``(None, None)`` for a path refused.

        Args:
            arg: what follows ``MAIL FROM:`` or ``RCPT TO:``.
        """
        return super()._getaddr(arg)  # type: ignore[misc]


def hands_raw_data(session: SMTP) -> bool:
    """Whether DATA goes undecoded to a ``handle_DATA`` hook (else aiosmtpd's own DATA must run)."""
    return not session._decode_data and "DATA" in session._handle_hooks  # noqa: SLF001


def stream_reader(session: SMTP) -> asyncio.StreamReader:
    """The session's reader (the client's bytes)."""
    return session._reader  # noqa: SLF001


def close_connection(session: SMTP) -> None:
    """Close the session's connection."""
    session._writer.close()  # noqa: SLF001


def end_transaction(session: SMTP) -> None:
    """End the mail transaction after DATA: a fresh envelope, the session kept."""
    session._set_post_data_state()  # noqa: SLF001


async def call_data_hook(session: SMTP) -> Any:
    """The handler's ``handle_DATA`` answer (``aiosmtpd.smtp.MISSING`` when it gave none)."""
    return await session._call_handler_hook("DATA")  # noqa: SLF001
