"""gateways/core/compat_channels_redis.py: the channels_redis internals it calls
still give what the batched layer stores, in the installed channels_redis."""

from __future__ import annotations

from importlib.metadata import version

from channels_redis.core import RedisChannelLayer

from gateways.core.compat_channels_redis import copies_per_key, group_key

UPGRADED = (f"gateways/core/compat_channels_redis.py was checked against channels_redis 4.3.0; the installed "
            f"{version('channels_redis')} changed what it relies on")


def layer() -> RedisChannelLayer:
    # Connections are made on first use: none here.
    return RedisChannelLayer(hosts=["redis://127.0.0.1:9"], prefix="p", capacity=7, channel_capacity={"big": 50})


def test_the_group_key():
    try:
        key = group_key(layer(), "room")
    except AttributeError as exc:
        raise AssertionError(f"{UPGRADED}: {exc}") from exc
    assert key == b"p:group:room", f"{UPGRADED}: _group_key gave {key!r}"


def test_one_copy_per_key_naming_its_channels_with_the_keys_capacity():
    stock = layer()
    try:
        messages, capacities = copies_per_key(stock, ["big", "specific.a!1", "specific.a!2"], {"type": "t"})
    except (AttributeError, TypeError, ValueError) as exc:
        raise AssertionError(f"{UPGRADED}: _map_channel_keys_to_connection: {exc}") from exc
    decoded = {key: stock.deserialize(value) for key, value in messages.items()}
    assert decoded == {
        "pbig": {"type": "t", "__asgi_channel__": ["big"]},
        "pspecific.a!": {"type": "t", "__asgi_channel__": ["specific.a!1", "specific.a!2"]},
    }, f"{UPGRADED}: _map_channel_keys_to_connection gave {decoded}"
    assert capacities == {"pbig": 50, "pspecific.a!": 7}, f"{UPGRADED}: capacities {capacities}"
