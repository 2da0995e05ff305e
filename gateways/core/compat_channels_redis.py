"""The channels_redis internals the batched layer shares, in one place.

:class:`~gateways.core.batched.BatchedRedisChannelLayer` keeps channels_redis's
data layout, so that stock and batched processes share one Redis. For a group
send it calls two private methods of ``channels_redis.core.RedisChannelLayer``
rather than copy them:

- ``_group_key(group)``: the Redis key of a group's members;
- ``_map_channel_keys_to_connection(channel_names, message)``: one serialized
  copy of the message per Redis key, naming the member channels of that key,
  and each key's capacity.

Checked against channels_redis 4.3.0; tests/compat/test_compat_channels_redis.py
fails, naming this module, when an installed version no longer has them or
changed what they give.
"""

from __future__ import annotations

from typing import Any

from channels_redis.core import RedisChannelLayer


def group_key(layer: RedisChannelLayer, group: str) -> bytes:
    """The Redis key of ``group``'s members (a sorted set scored by join time)."""
    return layer._group_key(group)  # noqa: SLF001


def copies_per_key(layer: RedisChannelLayer, channel_names: list[str],
                   message: dict[str, Any]) -> tuple[dict[Any, bytes], dict[Any, int]]:
    """``message`` for ``channel_names`` as a group send stores it: the serialized copy
    per Redis key (its ``__asgi_channel__`` names the channels of that key), and each
    key's capacity."""
    _by_connection, messages, capacities = layer._map_channel_keys_to_connection(channel_names, message)  # noqa: SLF001
    return messages, capacities
