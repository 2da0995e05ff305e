"""The event loop every process runs on: uvloop where it is installed, else asyncio's.

uvloop (libuv) runs the same asyncio code with cheaper wake-ups, socket
writes and timers: the email gateway spends ~15 % less CPU per message on it
(bench/email). ``GATEWAY_EVENT_LOOP=asyncio`` keeps the standard loop, for
debugging or a platform without uvloop; ``uvloop`` requires it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

#: The environment variable that chooses: ``auto`` (default), ``uvloop`` or ``asyncio``.
ENV = "GATEWAY_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


def loop_name(choice: str | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop :func:`run` uses for ``choice`` (default: from the environment).

    Raises ``ValueError`` for an unknown choice, or ``uvloop`` asked for and not installed.
    """
    choice = (choice or os.environ.get(ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise ValueError(f"{ENV}=uvloop, but uvloop is not installed (pip install uvloop)") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """Run ``main`` to completion on a new loop of the chosen kind; return its result."""
    if loop_name(choice) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
