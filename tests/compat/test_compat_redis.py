"""gateways/core/compat_redis.py still finds a redis-py connection's local address."""

from __future__ import annotations

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from gateways.core.compat_redis import local_address

UPGRADED = (f"gateways/core/compat_redis.py was checked against redis-py 8.2; the installed "
            f"{redis.__version__} changed what it relies on")


def test_an_unconnected_connection_has_no_address():
    connection = Connection()
    assert hasattr(connection, "_writer"), f"{UPGRADED}: Connection has no _writer"
    assert local_address(connection) is None


async def test_the_address_is_the_one_the_server_lists(redis_server):
    client = Redis.from_url(redis_server.url)
    connection = await client.connection_pool.get_connection()
    try:
        address = local_address(connection)
        assert address is not None, f"{UPGRADED}: a connected Connection's _writer gives no socket name"
        listed = {entry["addr"] for entry in await client.client_list()}
        assert address in listed, f"{UPGRADED}: {address} is not among the server's clients {listed}"
    finally:
        await client.connection_pool.release(connection)
        await client.aclose()
