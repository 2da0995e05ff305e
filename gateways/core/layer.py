"""The channel layer, built from ``layer:`` for daemons and for Django alike.

:func:`channel_layers_setting` produces Django's ``CHANNEL_LAYERS`` from the
same YAML the daemons read, so the two sides cannot drift apart; both end up
on the same class of :mod:`gateways.core.layer_classes` (or
:mod:`gateways.core.batched` with ``layer.batched``).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from gateways.core.batched import BatchedRedisChannelLayer
from gateways.core.config import Config, ConfigError, LayerConfig, load_config
from gateways.core.layer_classes import GatewayRedisChannelLayer, MemoryChannelLayer


def _redis_host(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme == "sentinel":
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError(f"{url!r}: name the master, e.g. sentinel://h1:26379,h2:26379/mymaster/0")
        sentinels = []
        for hostport in parts.netloc.split("@")[-1].split(","):
            host, _, port = hostport.rpartition(":")
            sentinels.append((host or hostport, int(port) if host else 26379))
        host: dict[str, Any] = {"master_name": path[0], "sentinels": sentinels}
        if len(path) > 1:
            host["db"] = int(path[1])
        if parts.password:
            host["password"] = parts.password
        host.update(dict(parse_qsl(parts.query)))
        return host
    return {"address": url}


def layer_kwargs(layer: LayerConfig) -> dict[str, Any]:
    """The constructor arguments of the layer class for ``layer``."""
    if layer.url is None:
        raise ValueError("layer.url is not set (only `gateway up` embeds a server; Django finds it "
                         "through channel_layers_setting)")
    if layer.url.startswith("memory:"):
        return {"expiry": layer.expiry, "group_expiry": layer.group_expiry,
                "capacity": layer.capacity, "channel_capacity": layer.channel_capacity}
    kwargs: dict[str, Any] = {
        "hosts": [_redis_host(layer.url)],
        "prefix": layer.prefix,
        "capacity": layer.capacity,
        # Every reply channel of a process shares one key, so they need room together.
        "channel_capacity": {"specific.*": layer.reply_capacity, **layer.channel_capacity},
        "expiry": layer.expiry,
        "group_expiry": layer.group_expiry,
        "max_connections": layer.max_connections,
    }
    if layer.symmetric_encryption_keys:
        kwargs["symmetric_encryption_keys"] = layer.symmetric_encryption_keys
    return kwargs


def layer_backend(layer: LayerConfig) -> str:
    """The dotted path of the layer class for ``layer``."""
    if layer.url and layer.url.startswith("memory:"):
        return "gateways.core.layer_classes.MemoryChannelLayer"
    if layer.batched:
        return "gateways.core.batched.BatchedRedisChannelLayer"
    return "gateways.core.layer_classes.GatewayRedisChannelLayer"


def build_layer(layer: LayerConfig) -> GatewayRedisChannelLayer | MemoryChannelLayer:
    """A channel layer for a daemon, from the ``layer:`` section."""
    kwargs = layer_kwargs(layer)
    backend = layer_backend(layer)
    if backend.endswith("MemoryChannelLayer"):
        return MemoryChannelLayer(**kwargs)
    if backend.endswith("BatchedRedisChannelLayer"):
        return BatchedRedisChannelLayer(**kwargs)
    return GatewayRedisChannelLayer(**kwargs)


def runtime_file(config_path: str | Path) -> Path:
    """Where ``gateway up`` records the embedded layer of ``config_path``.

    ``.<file name>.layer`` next to the configuration file (``config/demo.yaml``
    -> ``config/.demo.yaml.layer``): a JSON object with the layer ``url``, the
    ``pid`` of ``gateway up`` and when that process ``started`` (Linux), so a
    file left by a killed ``gateway up`` is recognised as stale even after
    its pid is reused. It exists while ``gateway up`` runs and is removed
    when it stops.
    """
    path = Path(config_path).resolve()
    return path.with_name(f".{path.name}.layer")


def write_runtime_file(config_path: str | Path, url: str) -> Path:
    """Record ``url`` as the embedded layer of ``config_path`` for this process."""
    path = runtime_file(config_path)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    record = {"url": url, "pid": os.getpid(), "started": _start_time(os.getpid())}
    temporary.write_text(json.dumps(record) + "\n", encoding="utf-8")
    temporary.replace(path)  # readers never see half a file
    return path


def remove_runtime_file(config_path: str | Path) -> None:
    """Remove the runtime file of ``config_path`` if this process wrote it."""
    path = runtime_file(config_path)
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux); None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the name before ")" may hold spaces


def _alive(pid: int, started: str | None) -> bool:
    """Whether the process that wrote a runtime file still runs: its pid lives and,
    where /proc tells, started when the file says (a reused pid does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return started is None or _start_time(pid) in (None, started)


def embedded_layer_url(config_path: str | Path) -> str:
    """The URL of the layer ``gateway up --config <config_path>`` embeds right now.

    Raises:
        LayerNotFound: ``gateway up`` does not run for this file (no runtime
            file, or one left by a ``gateway up`` that died).
    """
    path = runtime_file(config_path)
    advice = (f"start `gateway up --config {config_path}` (it embeds the layer server and records "
              f"its URL in {path}), or set layer.url in {config_path} to your Redis")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        url, pid, started = record["url"], int(record["pid"]), record.get("started")
    except FileNotFoundError:
        raise LayerNotFound(f"{config_path} sets no layer.url and `gateway up` does not run: {advice}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LayerNotFound(f"{path} is unreadable ({exc}): {advice}") from None
    if not _alive(pid, started):
        raise LayerNotFound(f"{path} was left by a `gateway up` (pid {pid}) that is gone: {advice}")
    return url


class LayerNotFound(ValueError):
    """No layer URL: the file sets none and no ``gateway up`` runs for it."""


def configured_channel_layer(config: str) -> Any:
    """The channel layer of the YAML file ``config``, built when Django first asks for it.

    :func:`channel_layers_setting` names this as ``BACKEND`` when the URL is
    not known at settings time: a file without ``layer.url`` (the layer is the
    one ``gateway up`` embeds, found through :func:`runtime_file`) or a file
    with problems (raised here as :class:`~gateways.core.config.ConfigError`,
    while ``manage.py check`` lists them). Resolving at first use means
    ``manage.py`` commands that never touch the layer work without the stack,
    and a process started before ``gateway up`` finds it once it runs.
    """
    layer = load_config(config).layer
    override = os.environ.get("GATEWAY_LAYER_URL")
    url = override or layer.url or embedded_layer_url(config)
    return build_layer(LayerConfig(**{**layer.__dict__, "url": url}))


def channel_layers_setting(config: Config | str) -> dict[str, dict[str, Any]]:
    """Django's ``CHANNEL_LAYERS`` for the layer a configuration file names.

    Use it in ``settings.py``::

        CHANNEL_LAYERS = channel_layers_setting(os.environ.get("GATEWAY_CONFIG", "gateway.yaml"))

    The URL is, in order: ``GATEWAY_LAYER_URL`` (``gateway up`` sets it for
    its children), the file's ``layer.url``, and without one the layer
    ``gateway up --config <the same file>`` embeds: ``gateway up`` records its
    URL in a runtime file next to the configuration (:func:`runtime_file`),
    so ``manage.py shell``, ``runworker`` and any other command reach the
    running demo stack. That last lookup, and a file with problems, are left
    to the first use of the layer (:func:`configured_channel_layer`): settings
    always import, and ``manage.py check`` reports the file's problems.
    """
    if isinstance(config, str):
        try:
            config = load_config(config)
        except ConfigError:
            return {"default": {"BACKEND": "gateways.core.layer.configured_channel_layer",
                                "CONFIG": {"config": config}}}
    layer = config.layer
    override = os.environ.get("GATEWAY_LAYER_URL")
    if override:
        layer = LayerConfig(**{**layer.__dict__, "url": override})
    if layer.url is None:
        return {"default": {"BACKEND": "gateways.core.layer.configured_channel_layer",
                            "CONFIG": {"config": str(config.path)}}}
    return {"default": {"BACKEND": layer_backend(layer), "CONFIG": layer_kwargs(layer)}}


async def close_layer(layer: Any) -> None:
    """Close the layer's connections for the running loop, ignoring a dead server."""
    close = getattr(layer, "close_pools", None)
    if close is None:
        return
    try:
        await asyncio.wait_for(close(), 5)
    except (OSError, asyncio.TimeoutError, ConnectionError):
        pass
