"""The local address of a redis-py asyncio connection.

The batched layer ends a blocking fetch early with ``CLIENT UNBLOCK``, which
needs the server's id for the connection; the server lists its clients by
address, so the layer finds it by the connection's own (local) address.
redis-py keeps no public accessor for it: this module reads the private
``Connection._writer`` (an :class:`asyncio.StreamWriter`, None until connected),
the one place that does.

Checked against redis-py 8.2; tests/compat/test_compat_redis.py fails, naming
this module, when an installed version no longer has it.
"""

from __future__ import annotations

from typing import Any


def local_address(connection: Any) -> str | None:
    """``host:port`` of ``connection``'s end of its TCP socket, as ``CLIENT LIST``
    shows it in ``addr``; None when it is not connected or not over TCP.

    Args:
        connection: a :class:`redis.asyncio.connection.Connection`.
    """
    writer = getattr(connection, "_writer", None)
    sockname = writer.get_extra_info("sockname") if writer is not None else None
    if isinstance(sockname, tuple):
        return f"{sockname[0]}:{sockname[1]}"
    return None
