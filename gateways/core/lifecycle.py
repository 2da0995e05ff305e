"""What every long-running process of the stack does the same way on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

#: The signals that ask a daemon, a worker or ``gateway up`` to stop (drain, then exit).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> bool:
    """Call ``callback`` on SIGTERM or SIGINT; whether the handlers were installed.

    They cannot be outside the main thread (a daemon hosted by a test) nor on
    a loop without signal support: the caller is then stopped another way.
    """
    try:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, callback)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        return False
    return True
