"""``gateway dead-letters``: list, show, retry and drop the dead letters of a stack.

The store and the layer are those of the ``--config`` file (``layer.url``;
without one, ``GATEWAY_LAYER_URL`` or the layer ``gateway up`` embeds for the
file). Exit codes: 0 done, 1 an unknown entry id, 2 a bad configuration,
3 Redis or the layer could not be reached (or a re-send failed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

from gateways.core.config import Config, LayerConfig
from gateways.core.deadletters import DeadLetter, DeadLetterStore
from gateways.core.runtime import LAYER_ERRORS

#: Exit codes.
OK, UNKNOWN_ID, BAD_CONFIG, UNREACHABLE = 0, 1, 2, 3


def add_parser(sub: Any) -> None:
    """Add ``dead-letters`` and its actions to the ``gateway`` subcommands ``sub``."""
    p = sub.add_parser("dead-letters", help="list, show, retry or drop messages that failed for good")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help_text)
        a.add_argument("--config", "-c", required=True, help="YAML configuration file")
        return a

    a = action("list", "a table of the dead letters, oldest first")
    a.add_argument("--channel", help="only this channel's")
    a.add_argument("--json", action="store_true", help="one JSON array of the entries instead")
    a = action("show", "one entry in full: the message and the error with its traceback")
    a.add_argument("id", help="the entry id (first column of `list`)")
    for name, help_text in (("retry", "re-send entries on their channels through the layer, then remove them"),
                            ("drop", "remove entries")):
        a = action(name, help_text)
        target = a.add_mutually_exclusive_group(required=True)
        target.add_argument("id", nargs="?", help="the entry id")
        target.add_argument("--all", action="store_true", help="every entry (of --channel, when given)")
        a.add_argument("--channel", help="with --all: only this channel's")


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``gateway dead-letters <action>``; return the exit code."""
    if getattr(args, "channel", None) and getattr(args, "id", None):
        print("--channel goes with --all, not with an entry id", file=sys.stderr)
        return BAD_CONFIG
    try:
        url = _layer_url(config)
        store = DeadLetterStore.from_config(config, url)
    except ValueError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return BAD_CONFIG
    return asyncio.run(_run(args, config, store, url))


def _layer_url(config: Config) -> str:
    from gateways.core.layer import embedded_layer_url

    url = os.environ.get("GATEWAY_LAYER_URL") or config.layer.url
    return url or embedded_layer_url(config.path)  # LayerNotFound is a ValueError


async def _run(args: argparse.Namespace, config: Config, store: DeadLetterStore, url: str) -> int:
    try:
        if args.action == "list":
            return await _list(store, args.channel, args.json)
        if args.action == "show":
            return await _show(store, args.id)
        if args.action == "drop":
            return await _drop(store, args)
        return await _retry(store, args, LayerConfig(**{**config.layer.__dict__, "url": url}))
    except LAYER_ERRORS as exc:
        print(f"cannot reach the dead-letter store at {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return UNREACHABLE
    finally:
        await store.close()


def utc(timestamp: float) -> str:
    """``2026-12-05 06:01:02Z``: a unix time as the CLI prints it."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(timestamp))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _shorten(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


async def _list(store: DeadLetterStore, channel: str | None, as_json: bool) -> int:
    entries = await store.list(channel)
    if as_json:
        print(json.dumps([asdict(entry) for entry in entries], indent=2, default=_json_bytes))
        return OK
    if not entries:
        print("no dead letters" + (f" on {channel}" if channel else ""))
        return OK
    rows = [["ID", "PROTOCOL", "DIRECTION", "CHANNEL", "MESSAGE ID", "ATTEMPTS", "LAST FAILURE (UTC)", "ERROR"]]
    for e in entries:
        rows.append([e.id, e.protocol, e.direction, e.channel, e.message_id or "-", str(e.attempts),
                     utc(e.last_failure), _shorten(e.error_line)])
    print(_table(rows))
    return OK


async def _show(store: DeadLetterStore, entry_id: str) -> int:
    entry = await store.get(entry_id)
    if entry is None:
        print(f"no dead letter {entry_id}", file=sys.stderr)
        return UNKNOWN_ID
    print(render(entry))
    return OK


def render(entry: DeadLetter) -> str:
    """An entry in full, as ``show`` prints it."""
    lines = [
        f"id:            {entry.id}",
        f"protocol:      {entry.protocol}",
        f"direction:     {entry.direction}",
        f"channel:       {entry.channel}",
        f"message id:    {entry.message_id or '-'}",
        f"attempts:      {entry.attempts}",
        f"first failure: {utc(entry.first_failure)}",
        f"last failure:  {utc(entry.last_failure)}",
        "message:",
        _indent(json.dumps(entry.message, indent=2, default=_json_bytes, ensure_ascii=False)),
        "error:",
        _indent(entry.error.rstrip()),
    ]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


async def _targets(store: DeadLetterStore, args: argparse.Namespace) -> list[DeadLetter] | None:
    """The entries an action names; None (and a message) for an unknown id."""
    if args.all:
        return await store.list(args.channel)
    entry = await store.get(args.id)
    if entry is None:
        print(f"no dead letter {args.id}", file=sys.stderr)
    return None if entry is None else [entry]


async def _drop(store: DeadLetterStore, args: argparse.Namespace) -> int:
    entries = await _targets(store, args)
    if entries is None:
        return UNKNOWN_ID
    dropped = 0
    for entry in entries:
        if await store.drop(entry.id):
            dropped += 1
            if not args.all:
                print(f"dropped {entry.id} ({entry.protocol} {entry.channel} {entry.message_id or '-'})")
    if args.all:
        print(f"dropped {dropped} dead letter(s)" + (f" on {args.channel}" if args.channel else ""))
    return OK


async def _retry(store: DeadLetterStore, args: argparse.Namespace, layer_config: LayerConfig) -> int:
    from gateways.core.layer import build_layer, close_layer

    entries = await _targets(store, args)
    if entries is None:
        return UNKNOWN_ID
    layer = build_layer(layer_config)
    failed = 0
    try:
        for entry in entries:
            try:
                await store.retry(entry.id, layer.send)
            except Exception as exc:  # noqa: BLE001 - ChannelFull or the layer down: say so, keep the entry
                failed += 1
                print(f"not retried {entry.id}: sending on {entry.channel} failed: {type(exc).__name__}: {exc}; "
                      "the entry is kept", file=sys.stderr)
                continue
            print(f"re-sent {entry.id} on {entry.channel} ({entry.protocol} {entry.direction}, "
                  f"message id {entry.message_id or '-'}); entry removed")
    finally:
        await close_layer(layer)
    if args.all:
        print(f"retried {len(entries) - failed} of {len(entries)} dead letter(s)"
              + (f" on {args.channel}" if args.channel else ""))
    return UNREACHABLE if failed else OK


def _json_bytes(value: Any) -> Any:
    """Bytes in JSON output: ``{"bytes": text}`` when UTF-8, else ``{"base64": ...}``."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return {"bytes": bytes(value).decode("utf-8")}
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
