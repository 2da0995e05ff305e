"""Where ``email.send`` goes: an SMTP relay, or a development relay.

``email.relay`` chooses one, in the spirit of Django's email backends:

- ``smtp://[user:pass@]host:port[?starttls=require|off]`` - STARTTLS when the
  server offers it (``require``: fail without it; ``off``: never);
- ``smtps://[user:pass@]host:port`` - TLS from the first byte;
- ``console://`` - prints each message on standard output;
- ``file://DIR`` - writes each message into the Maildir ``DIR`` (relative to
  the config file), one file per message in ``DIR/new/``.

Every relay raises :class:`RelayError` with ``transient`` set when a later
attempt may succeed (4xx, connection problems) and cleared when it cannot (5xx).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from gateways.email.protocol import Outbound


class RelayError(Exception):
    """A delivery that did not happen.

    Args:
        message: what went wrong, with the server's answer when there was one.
        code: the SMTP reply code, if any.
        transient: whether retrying may help.
    """

    def __init__(self, message: str, code: int | None = None, transient: bool = True) -> None:
        self.code = code
        self.transient = transient
        super().__init__(message)


class Relay(Protocol):
    """Delivers one message; returns the final answer (e.g. ``250 2.0.0 OK``)."""

    async def deliver(self, outbound: Outbound) -> "Delivered": ...


class Delivered:
    """The relay's answer to a delivered message.

    Args:
        response: the final answer, e.g. ``250 2.0.0 OK``.
        refused: recipients the relay refused while accepting the others.
    """

    def __init__(self, response: str, refused: dict[str, str] | None = None) -> None:
        self.response = response
        self.refused = refused or {}


class SmtpRelay:
    """An SMTP server reached with aiosmtplib.

    Args:
        url: ``smtp://`` or ``smtps://`` URL.
        timeout: seconds per step.
        verify_tls: check the server's certificate.
    """

    def __init__(self, url: str, timeout: float = 30.0, verify_tls: bool = True) -> None:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.hostname = parts.hostname or "localhost"
        self.implicit_tls = parts.scheme == "smtps"
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        starttls = query.get("starttls", "")
        self.start_tls: bool | None = {"require": True, "off": False}.get(starttls)
        self.timeout = timeout
        self.verify_tls = verify_tls

    async def deliver(self, outbound: Outbound) -> Delivered:
        try:
            refused, response = await aiosmtplib.send(
                outbound.data,
                sender=outbound.sender,
                recipients=outbound.recipients,
                hostname=self.hostname,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.implicit_tls,
                start_tls=False if self.implicit_tls else self.start_tls,
                validate_certs=self.verify_tls,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            answers = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            raise RelayError(f"every recipient refused: {answers}", code=max(codes, default=None),
                             transient=any(400 <= c < 500 for c in codes)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise RelayError(f"{exc.code} {exc.message}", code=exc.code,
                             transient=400 <= exc.code < 500) from exc
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            raise RelayError(f"{type(exc).__name__}: {exc}", transient=True) from exc
        refusals = {addr: f"{r.code} {r.message}" for addr, r in refused.items()}
        # aiosmtplib returns the text of the final 250 without its code
        return Delivered(f"250 {response.strip()}", refusals)


class ConsoleRelay:
    """Prints each message on standard output (development)."""

    async def deliver(self, outbound: Outbound) -> Delivered:
        text = outbound.data.decode("utf-8", "replace").replace("\r\n", "\n")
        sys.stdout.write(f"---------- email.send from <{outbound.sender}> to {', '.join(outbound.recipients)}\n"
                         f"{text}\n---------- end\n")
        sys.stdout.flush()
        return Delivered("250 2.0.0 printed on the console")


class MaildirRelay:
    """Writes each message into a Maildir (development and tests).

    Args:
        directory: the Maildir; ``tmp``, ``new`` and ``cur`` are created.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def deliver(self, outbound: Outbound) -> Delivered:
        try:
            name = await asyncio.to_thread(self._write, outbound)
        except OSError as exc:
            raise RelayError(f"cannot write to Maildir {self.directory}: {exc}", transient=True) from exc
        return Delivered(f"250 2.0.0 written to {name}")

    def _write(self, outbound: Outbound) -> Path:
        for sub in ("tmp", "new", "cur"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        name = f"{time.time():.6f}.P{os.getpid()}Q{uuid.uuid4().hex[:12]}.{socket.gethostname()}"
        trace = f"Return-Path: <{outbound.sender}>\r\n" + "".join(
            f"Delivered-To: {r}\r\n" for r in outbound.recipients)
        data = (trace.encode() + outbound.data).replace(b"\r\n", b"\n")
        tmp = self.directory / "tmp" / name
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        target = self.directory / "new" / name
        os.rename(tmp, target)
        return target


def build_relay(url: str, base: Path, timeout: float = 30.0, verify_tls: bool = True) -> Relay:
    """The relay for an ``email.relay`` URL; ``file://`` paths are taken relative to ``base``."""
    parts = urlsplit(url)
    if parts.scheme in ("smtp", "smtps"):
        return SmtpRelay(url, timeout, verify_tls)
    if parts.scheme == "console":
        return ConsoleRelay()
    if parts.scheme == "file":
        return MaildirRelay((base / unquote(parts.netloc + parts.path)).resolve())
    raise ValueError(f"unknown relay scheme in {url!r}")
