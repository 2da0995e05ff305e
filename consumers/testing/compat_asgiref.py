"""Whether an asgiref ``ApplicationCommunicator`` started its application.

The harness must know whether the consumer instance runs without starting it:
asgiref's public ``future`` property starts it on first use. This module reads
the private ``ApplicationCommunicator._future`` (None until started), the one
place that does.

Checked against asgiref 3.13.0; tests/compat/test_compat_asgiref.py fails,
naming this module, when an installed version no longer has it.
"""

from __future__ import annotations

import asyncio
from typing import Any


def started_application(communicator: Any) -> asyncio.Future | None:
    """The task running ``communicator``'s application, or None when it was not started.

    Args:
        communicator: an ``asgiref.testing.ApplicationCommunicator``.
    """
    return communicator._future  # noqa: SLF001
