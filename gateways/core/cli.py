"""The ``gateway`` command.

``gateway <protocol> --config FILE`` runs one daemon, ``gateway check`` validates
a file, ``gateway up`` runs the whole stack, ``gateway worker`` runs Django
consumers, ``gateway dead-letters`` lists, shows, retries and drops the
messages that failed for good.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gateways.core import deadletters_cli, eventloop, lifeline, registry
from gateways.core.config import (
    MEMORY_LAYER_NOTE,
    Config,
    ConfigError,
    check_host_port,
    check_layer_url,
    is_memory_layer,
    load_config,
)
from gateways.core.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", required=True, help="YAML configuration file")
        p.add_argument("--log-json", action="store_true", default=None, help="log JSON lines")
        p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")

    for name in registry.section_classes():
        p = sub.add_parser(name, help=f"run the {name} gateway daemon")
        common(p)
        p.add_argument("--layer", help="channel layer URL, overriding layer.url")
        p.add_argument("--listen", help="HOST:PORT to listen on, overriding the file")

    p = sub.add_parser("check", help="validate a configuration file")
    p.add_argument("--config", "-c", required=True, help="YAML configuration file")

    p = sub.add_parser("up", help="run the whole stack: layer, daemons, Django workers")
    common(p)

    p = sub.add_parser("worker", help="run the Django consumers for the configured channels")
    common(p)
    p.add_argument("channels", nargs="*", help="channels to consume (default: those the config routes to)")

    deadletters_cli.add_parser(sub)
    return parser


def read_config(path: str) -> tuple[Config | None, list[str]]:
    """The configuration in ``path``, or None and the lines ``gateway check`` prints.

    Django's system checks (``consumers.apps``) report the same lines.
    """
    try:
        return load_config(path), []
    except ConfigError as exc:
        return None, [str(problem) for problem in exc.problems]


def config_problems(path: str) -> list[str]:
    """The ``file:line: key.path: problem`` lines for ``path``; empty when it is valid."""
    return read_config(path)[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script."""
    args = _parser().parse_args(argv)
    lifeline.watch_inherited()  # started by `gateway up`: stop when it is gone
    config, problems = read_config(args.config)
    if config is None:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 2
    if args.command == "dead-letters":
        setup_logging(config.log.level, config.log.json)
        if is_memory_layer(config.layer.url):
            print(f"{args.config}: layer.url: {MEMORY_LAYER_NOTE}", file=sys.stderr)
            return 2
        return deadletters_cli.run(args, config)
    # A daemon needs only its own protocol's extra; the other commands need the
    # extra of every section in the file.
    daemon = args.command in registry.protocol_names()
    missing = registry.missing_extras([args.command] if daemon else config.sections)
    for exc in missing:
        print(str(exc) if daemon else f"{args.config}: {exc.protocol}: {exc}", file=sys.stderr)
    if missing:
        return 2
    if args.command == "check":
        print(f"{args.config}: OK ({', '.join(config.sections) or 'no gateway sections'})")
        if is_memory_layer(config.layer.url):
            print(f"{args.config}: layer.url: {MEMORY_LAYER_NOTE}", file=sys.stderr)
        return 0
    setup_logging(args.log_level or config.log.level, config.log.json if args.log_json is None else True)
    try:
        eventloop.loop_name()
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if is_memory_layer(getattr(args, "layer", None) or config.layer.url):
        where = "--layer" if getattr(args, "layer", None) else f"{args.config}: layer.url"
        print(f"{where}: {MEMORY_LAYER_NOTE}", file=sys.stderr)
        return 2
    if args.command == "up":
        from gateways.core.supervisor import run_stack

        return run_stack(config)
    if args.command == "worker":
        from gateways.core.worker import run_worker

        return run_worker(config, args.channels)
    return _run_daemon(args, config)


def _run_daemon(args: argparse.Namespace, config) -> int:
    from gateways.core.daemon import run_gateway

    gateway_class = registry.gateway_class(args.command)
    if args.command not in config.sections:
        print(f"{args.config}: no `{args.command}:` section", file=sys.stderr)
        return 2
    if args.layer:
        problem = check_layer_url(args.layer)
        if problem:
            print(f"--layer: {problem}", file=sys.stderr)
            return 2
        config.layer.url = args.layer
    if args.listen and check_host_port(args.listen):
        print(f"--listen: {check_host_port(args.listen)}", file=sys.stderr)
        return 2
    gateway_class.apply_overrides(config.sections[args.command], args.listen)
    if not config.layer.url:
        print(f"{args.config}: layer.url is required to run a daemon alone (or use `gateway up`)",
              file=sys.stderr)
        return 2
    try:
        return run_gateway(gateway_class, config)
    except OSError as exc:
        message = lifeline.port_in_use_message(exc, getattr(config.sections[args.command], "listen", None))
        if message is None:
            raise
        print(f"{args.command}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
