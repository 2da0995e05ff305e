"""YAML configuration into typed, validated dataclasses.

One file may hold the whole stack: ``layer:``, ``django:``, ``log:`` and one
section per protocol (``email:``, ``slack:``, ``mqtt:``, ``websocket:``). Each
protocol package declares its section as a dataclass (see
:class:`GatewaySection`); this module knows no protocol, it finds the section
classes through :mod:`gateways.core.registry`.

Every problem is reported as ``file:line: key.path: message`` and all of them
are collected before failing, so ``gateway check`` can list them at once.

Section dataclasses describe themselves with ordinary type hints (``str``,
``int``, ``float``, ``bool``, ``list[X]``, ``dict[str, X]``, ``X | None``,
``Literal[...]`` and nested dataclasses) and one declaration per key::

    @dataclass
    class ChatSection(GatewaySection):
        listen: str = host_port("127.0.0.1:6667", "HOST:PORT to listen on")
        rooms: list[str] = setting([], "rooms to join")
        send_channel: str = channel_name("chat.send", "channel consumers send chat.send on")
        timeout: float = positive(30.0, "seconds a client may stay silent")
        tls_cert: str | None = config_file("PEM certificate")

:func:`setting` is the general form; :func:`positive`, :func:`non_negative`,
:func:`channel_name`, :func:`host_port`, :func:`regex`, :func:`url` and
:func:`config_file` add the check their name says. They fill these
``field(metadata=...)`` keys, which a plain ``field`` may also set:

- ``doc``: one line for the configuration reference (required);
- ``check``: ``callable(value) -> str | None`` returning a problem;
- ``required``: the key must be present even though it has no default;
- ``file``: the value names a file the daemon reads (a certificate, say): it
  is taken relative to the configuration file's directory, replaced by the
  absolute path, and a file that is missing or cannot be read is a problem
  here rather than a failure when the daemon starts or, worse, reconnects.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import urlsplit

import yaml

from gateways.core import registry

log = logging.getLogger("gateway.config")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Problem:
    """One configuration problem at a place in a file."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class ConfigError(Exception):
    """A configuration file with one or more problems."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# --------------------------------------------------------------------------
# Field checks, used in ``metadata={"check": ...}``.


def check_host_port(value: str) -> str | None:
    """``HOST:PORT`` with a numeric port (IPv6 hosts in brackets)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"{value!r} is not HOST:PORT"
    return None


def split_host_port(value: str) -> tuple[str, int]:
    """Split a checked ``HOST:PORT`` into host and port."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def check_url(*schemes: str) -> Callable[[str], str | None]:
    """A check that accepts URLs with one of ``schemes`` and a location."""

    def check(value: str) -> str | None:
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            allowed = ", ".join(f"{s}://" for s in schemes)
            return f"{value!r} is not a URL with scheme {allowed}"
        if not parts.netloc and not parts.path:
            return f"{value!r} has no host or path"
        if "," not in parts.netloc:  # several hosts are judged elsewhere
            try:
                parts.port
            except ValueError as exc:
                return f"{value!r}: {exc}"
        return None

    return check


def check_regex(value: str) -> str | None:
    """A valid Python regular expression."""
    try:
        re.compile(value)
    except re.error as exc:
        return f"{value!r} is not a valid regular expression: {exc}"
    return None


def check_positive(value: float) -> str | None:
    """A number greater than zero."""
    return None if value > 0 else f"{value} must be greater than 0"


def check_non_negative(value: float) -> str | None:
    """A number of zero or more."""
    return None if value >= 0 else f"{value} must not be negative"


def check_channel_name(value: str) -> str | None:
    """A valid Channels channel name (no ``!``: those are process-specific)."""
    if not re.fullmatch(r"[a-zA-Z0-9_.\-]{1,99}", value):
        return f"{value!r} is not a valid channel name (letters, digits, '_', '-', '.')"
    return None


def tls_files_problem(cert: str | None = None, key: str | None = None, ca: str | None = None) -> str | None:
    """Why PEM files do not make a TLS context, or None.

    For a section's ``problems()``, after the ``file`` checks: files that do
    not exist were reported there, and are not judged again here.

    Args:
        cert: a certificate (chain) file.
        key: its private key (``cert`` holds it when None).
        ca: a bundle of CA certificates.
    """
    import ssl

    if not all(os.path.isfile(p) for p in (cert, key, ca) if p):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError) as exc:
            return f"{ca!r} holds no usable CA certificate: {exc}"
    if cert:
        try:
            # A password callback, so that an encrypted key fails here instead of prompting.
            context.load_cert_chain(cert, key, password=lambda: b"")
        except (ssl.SSLError, ValueError) as exc:
            return f"cannot load the certificate {cert!r} with the key {key or cert!r}: {exc}"
    return None


# --------------------------------------------------------------------------
# Field declarations: one call per key, so a section reads as a table of keys.

#: A field check: the value in, the problem (or None) out.
Check = Callable[[Any], str | None]


def setting(default: Any, doc: str, *, check: Check | None = None, required: bool = False,
            file: bool = False) -> Any:
    """A section key: a dataclass ``field`` with the metadata this module reads.

    Args:
        default: the value when the file does not set the key; a list, a
            dict or a dataclass instance is copied for each section.
        doc: one line for the configuration reference.
        check: returns the problem with a value (each item of a list), or None.
        required: the key must be in the file.
        file: the value names a file read relative to the configuration file.
    """
    metadata: dict[str, Any] = {"doc": doc}
    if check is not None:
        metadata["check"] = check
    if required:
        metadata["required"] = True
    if file:
        metadata["file"] = True
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return field(default=default, metadata=metadata)


def positive(default: float, doc: str) -> Any:
    """A number key that must be greater than zero."""
    return setting(default, doc, check=check_positive)


def non_negative(default: float, doc: str) -> Any:
    """A number key that may be zero but not negative."""
    return setting(default, doc, check=check_non_negative)


def channel_name(default: str | None, doc: str, *, required: bool = False) -> Any:
    """A key naming a channel of the layer."""
    return setting(default, doc, check=check_channel_name, required=required)


def host_port(default: str | None, doc: str, *, required: bool = False) -> Any:
    """A ``HOST:PORT`` key: where a listener listens."""
    return setting(default, doc, check=check_host_port, required=required)


def regex(default: str | list[str] | None, doc: str, *, required: bool = False) -> Any:
    """A regular expression key (or a list of them)."""
    return setting(default, doc, check=check_regex, required=required)


def url(default: str | None, doc: str, schemes: tuple[str, ...], *, required: bool = False) -> Any:
    """A URL key with one of ``schemes``."""
    return setting(default, doc, check=check_url(*schemes), required=required)


def config_file(doc: str) -> Any:
    """An optional key naming a file the daemon reads, relative to the configuration file."""
    return setting(None, f"{doc}; relative to the config file", file=True)


#: Why the gateway commands refuse ``layer.url: memory://``.
MEMORY_LAYER_NOTE = (
    "memory:// keeps channels inside one Python process, so a daemon on it never meets consumers in "
    "another: it serves only a daemon and its consumers in one process (tests); `gateway email|slack|mqtt|"
    "websocket`, `gateway worker` and `gateway up` refuse it: use redis:// (or leave layer.url unset for "
    "`gateway up`)"
)


def check_layer_url(value: str) -> str | None:
    """A layer URL: ``redis://``, ``rediss://``, ``unix://``, ``sentinel://`` or ``memory://``."""
    if urlsplit(value).scheme == "memory":
        return None  # nothing to locate: the layer lives in the process
    return check_url("redis", "rediss", "unix", "sentinel", "memory")(value)


def is_memory_layer(url: str | None) -> bool:
    """Whether ``url`` names the in-process layer."""
    return bool(url) and urlsplit(url).scheme == "memory"


# --------------------------------------------------------------------------
# The shared sections.


@dataclass
class HealthConfig:
    """The optional HTTP port with ``/healthz`` and Prometheus ``/metrics``."""

    listen: str | None = host_port(None, "HOST:PORT for /healthz and /metrics; off when unset")


@dataclass
class GatewaySection:
    """Keys every protocol section has; protocol sections subclass this."""

    #: Deprecated key -> its new name; a file may still use the old one (a WARNING says so).
    renamed_keys: typing.ClassVar[dict[str, str]] = {}

    grace_period: float = positive(10.0, "seconds to finish in-flight work on SIGTERM before closing")
    health: HealthConfig = setting(HealthConfig(), "health and metrics HTTP endpoint")
    outbound_concurrency: int = positive(64, "outbound messages handled at once")


@dataclass
class LayerConfig:
    """The channel layer every daemon and worker of the stack shares."""

    url: str | None = setting(None, "redis://, rediss://, unix://, sentinel://h1:p1,h2:p2/master, "
                              "or memory:// (a daemon and its consumers in one process: tests; "
                              "the gateway commands refuse it); unset: `gateway up` embeds a server",
                              check=check_layer_url)
    prefix: str = setting("asgi", "key prefix in Redis")
    capacity: int = positive(1000, "messages a channel holds before sends raise ChannelFull")
    channel_capacity: dict[str, int] = setting({}, "per-channel capacities: glob pattern -> capacity")
    expiry: int = positive(60, "seconds an unread message lives")
    group_expiry: int = positive(86400, "seconds a group membership lives")
    symmetric_encryption_keys: list[str] = setting([], "keys to encrypt messages at rest (use ${ENV})")
    reply_capacity: int = positive(10000, "messages one process's reply channels hold together "
                                   "(they share one Redis key); "
                                   "a channel_capacity entry for specific.* overrides it")
    max_connections: int = positive(64, "Redis connections per process; operations beyond wait")
    batched: bool = setting(True, "use the batched layer (same Redis data as channels_redis, "
                            "many messages per round trip); false: channels_redis's own one-message round trips")


@dataclass
class DjangoConfig:
    """The Django project whose consumers handle the gateways' messages."""

    settings: str = setting("", "settings module, e.g. demo.settings", required=True)
    path: list[str] = setting([], "directories added to sys.path, relative to this file")
    workers: int = positive(1, "worker processes `gateway up` starts")
    concurrency: int = positive(64, "messages of different conversations `gateway worker` "
                                "handles at once, per channel")
    parallel_sync: bool = setting(False, "run sync handlers of different conversations in parallel threads "
                                  "(one per lane); false: all on one thread, as Channels does, safe on SQLite")
    channels: list[str] = setting([], "extra channels the workers consume, beyond those the routes name")


@dataclass
class LogConfig:
    """Logging of every daemon."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "log level")
    json: bool = setting(False, "one JSON object per line instead of text")


@dataclass
class Config:
    """A whole configuration file.

    Args:
        path: the file it came from (``<string>`` for text).
        layer: the channel layer.
        django: the Django project, when the file names one.
        log: logging.
        sections: protocol name -> that protocol's section dataclass.
    """

    path: Path
    layer: LayerConfig
    django: DjangoConfig | None
    log: LogConfig
    sections: dict[str, GatewaySection]

    def resolve(self, relative: str) -> Path:
        """A path from the file, taken relative to the file's directory."""
        return (self.path.parent / relative).resolve()


# --------------------------------------------------------------------------
# YAML with line numbers.


class _Loader(yaml.SafeLoader):
    """The loader whose resolver and scalar constructors the reader uses."""


@dataclass
class _Node:
    value: Any
    line: int
    key_line: int = 0  # the line of the key this value belongs to, when in a mapping


def _compose(text: str, filename: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([Problem(filename, line, "", f"invalid YAML: {exc.problem or exc}")])
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(filename, 1, "", f"invalid YAML: {exc}")])


class _Reader:
    """Turns composed YAML nodes into plain values, keeping each one's line."""

    def __init__(self, filename: str, environ: typing.Mapping[str, str]) -> None:
        self.filename = filename
        self.environ = environ
        self.problems: list[Problem] = []
        self._scalars = _Loader("")

    def problem(self, line: int, path: str, message: str) -> None:
        self.problems.append(Problem(self.filename, line, path, message))

    def read(self, node: yaml.Node, path: str) -> _Node:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, _Node] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                if not isinstance(key_node, yaml.ScalarNode) or not isinstance(key, str):
                    self.problem(key_node.start_mark.line + 1, path, "keys must be strings")
                    continue
                sub = f"{path}.{key}" if path else key
                if key in out:
                    self.problem(key_node.start_mark.line + 1, sub, "duplicate key")
                    continue
                out[key] = self.read(value_node, sub)
                out[key].key_line = key_node.start_mark.line + 1
            return _Node(out, line)
        if isinstance(node, yaml.SequenceNode):
            return _Node([self.read(n, f"{path}[{i}]") for i, n in enumerate(node.value)], line)
        value = self._scalars.construct_object(node)
        if isinstance(value, str):
            value = self.interpolate(value, line, path)
        return _Node(value, line)

    def interpolate(self, text: str, line: int, path: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            self.problem(line, path, f"environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(substitute, text)


# --------------------------------------------------------------------------
# Plain values into dataclasses.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _Builder:
    def __init__(self, reader: _Reader, base: Path) -> None:
        self.reader = reader
        self.base = base

    def readable_file(self, value: str) -> tuple[str, str | None]:
        """``value`` as an absolute path (relative ones from the config's
        directory) and the problem with reading it, if any."""
        path = self.base / Path(value).expanduser()
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            return str(path), f"file {str(path)!r} does not exist"
        except IsADirectoryError:
            return str(path), f"{str(path)!r} is a directory, not a file"
        except OSError as exc:
            return str(path), f"file {str(path)!r} cannot be read: {exc.strerror}"
        return str(path), None

    def build(self, tp: Any, node: _Node, path: str) -> Any:
        """Convert ``node`` to ``tp``; on a problem, record it and return None."""
        origin = typing.get_origin(tp)
        if origin in self._BY_ORIGIN:
            return self._BY_ORIGIN[origin](self, tp, node, path)
        if dataclasses.is_dataclass(tp):
            return self._build_section(tp, node, path)
        return self._build_scalar(tp, node, path)

    def _build_union(self, tp: Any, node: _Node, path: str) -> Any:
        """``X | Y | None``: None when allowed, else the first member the value fits."""
        args = typing.get_args(tp)
        if node.value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None) and self._matches(arg, node.value):
                return self.build(arg, node, path)
        return self._wrong(tp, node, path)

    def _build_literal(self, tp: Any, node: _Node, path: str) -> Any:
        if node.value in typing.get_args(tp):
            return node.value
        return self._wrong(tp, node, path)

    def _build_list(self, tp: Any, node: _Node, path: str) -> Any:
        if not isinstance(node.value, list):
            return self._wrong(tp, node, path)
        (item,) = typing.get_args(tp)
        return [self.build(item, n, f"{path}[{i}]") for i, n in enumerate(node.value)]

    def _build_dict(self, tp: Any, node: _Node, path: str) -> Any:
        if not isinstance(node.value, dict):
            return self._wrong(tp, node, path)
        _, item = typing.get_args(tp)
        return {k: self.build(item, n, f"{path}.{k}") for k, n in node.value.items()}

    def _build_section(self, tp: Any, node: _Node, path: str) -> Any:
        """A nested dataclass; an empty key (``health:``) is one with every default."""
        value = {} if node.value is None else node.value
        if not isinstance(value, dict):
            return self._wrong(tp, node, path)
        return self.build_dataclass(tp, value, node.line, path)

    def _build_scalar(self, tp: Any, node: _Node, path: str) -> Any:
        """A string, number or boolean: an int is a float too, a number a string,
        never a boolean a number."""
        value = node.value
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is float and is_number:
            return float(value)
        if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
            return value
        if tp is str and is_number:
            return str(value)
        return self._wrong(tp, node, path)

    #: How a generic type (its ``typing.get_origin``) is built.
    _BY_ORIGIN: dict[Any, Callable[[_Builder, Any, _Node, str], Any]] = {
        typing.Union: _build_union,
        types.UnionType: _build_union,
        Literal: _build_literal,
        list: _build_list,
        dict: _build_dict,
    }

    @staticmethod
    def _matches(tp: Any, value: Any) -> bool:
        origin = typing.get_origin(tp)
        if origin is list:
            return isinstance(value, list)
        if origin is dict or dataclasses.is_dataclass(tp):
            return isinstance(value, dict)
        if origin is Literal:
            return value in typing.get_args(tp)
        if tp is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return tp is Any or isinstance(value, tp)

    def _wrong(self, tp: Any, node: _Node, path: str) -> None:
        shown = "nothing" if node.value is None else repr(_plain(node.value))
        self.reader.problem(node.line, path, f"expected {_type_name(tp)}, got {shown}")
        return None

    def build_dataclass(self, cls: type, values: dict[str, _Node], line: int, path: str) -> Any:
        """The dataclass ``cls`` from a mapping's ``values``; None when it cannot be made."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        kwargs: dict[str, Any] = {}
        values = self._renamed(cls, values, path)
        for key, node in values.items():
            sub = f"{path}.{key}" if path else key
            if key not in fields:
                self.reader.problem(node.line, sub, f"unknown key (known: {', '.join(sorted(fields))})")
                continue
            value = self.build(hints[key], node, sub)
            if value is None and node.value is not None:
                continue  # the wrong type, already reported
            kwargs[key] = self._checked(fields[key], value, node.line, sub)
        self._report_missing(fields, values, line, path)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            self.reader.problem(line, path, str(exc))
            return None

    def _renamed(self, cls: type, values: dict[str, _Node], path: str) -> dict[str, _Node]:
        """``values`` with each deprecated key of ``cls`` (its ``renamed_keys``)
        under its new name, and a WARNING logged for each."""
        renamed: dict[str, str] = getattr(cls, "renamed_keys", {})
        if not renamed.keys() & values.keys():
            return values
        out: dict[str, _Node] = {}
        for key, node in values.items():
            new = renamed.get(key)
            if new is None:
                out.setdefault(key, node)
                continue
            old_path, new_path = (f"{path}.{key}", f"{path}.{new}") if path else (key, new)
            if new in values:
                self.reader.problem(node.line, old_path, f"deprecated name of {new_path}, which is also set: "
                                    "keep only one")
                continue
            log.warning("%s:%d: %s is deprecated; call it %s", self.reader.filename, node.key_line, old_path,
                        new_path)
            out[new] = node
        return out

    def _checked(self, f: dataclasses.Field, value: Any, line: int, path: str) -> Any:
        """``value`` after the key's ``file`` and ``check`` metadata, their problems recorded."""
        if f.metadata.get("file") and isinstance(value, str):
            value, problem = self.readable_file(value)
            if problem:
                self.reader.problem(line, path, problem)
        check = f.metadata.get("check")
        if check is not None and value is not None:
            for item in value if isinstance(value, list) else [value]:
                problem = check(item)
                if problem:
                    self.reader.problem(line, path, problem)
        return value

    def _report_missing(self, fields: dict[str, dataclasses.Field], values: dict[str, _Node], line: int,
                        path: str) -> None:
        for name, f in fields.items():
            if f.metadata.get("required") and name not in values:
                self.reader.problem(line, f"{path}.{name}" if path else name, "required key is missing")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v.value) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v.value) for v in value]
    return value


def _line_of(node: _Node, path: str) -> int | None:
    """The line of ``path`` (``key``, ``routes[1].channel``) below ``node``; None when absent."""
    line = None
    for part in re.findall(r"\[\d+\]|[^.\[\]]+", path):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(node.value, list) or index >= len(node.value):
                return None
            node = node.value[index]
            line = node.line
        else:
            if not isinstance(node.value, dict) or part not in node.value:
                return None
            node = node.value[part]
            line = node.key_line
    return line


def section_problems(section: Any) -> list[tuple[str, str]]:
    """Cross-field problems a section reports through ``problems()``."""
    problems = getattr(section, "problems", None)
    return list(problems()) if callable(problems) else []


def parse_config(
    text: str,
    filename: str = "<string>",
    section_classes: dict[str, type] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """Parse configuration text; raise :class:`ConfigError` listing every problem.

    Args:
        text: the YAML text.
        filename: the name problems are reported under.
        section_classes: protocol name -> section dataclass; by default the
            installed protocols' (see :func:`gateways.core.registry.section_classes`).
        environ: where ``${VAR}`` references are looked up (``os.environ``).
    """
    if section_classes is None:
        section_classes = registry.section_classes()
    reader = _Reader(filename, os.environ if environ is None else environ)
    root = _compose(text, filename)
    top = reader.read(root, "") if root is not None else _Node({}, 1)
    if not isinstance(top.value, dict):
        raise ConfigError([Problem(filename, top.line, "", "the file must be a mapping of sections")])
    builder = _Builder(reader, Path(filename).resolve().parent if filename != "<string>" else Path.cwd())
    items = top.value
    known = {"layer", "django", "log", *section_classes}
    for key, node in items.items():
        if key not in known:
            reader.problem(node.line, key, f"unknown section (known: {', '.join(sorted(known))})")
    empty = _Node({}, 1)
    layer = builder.build(LayerConfig, items.get("layer", empty), "layer") or LayerConfig()
    django = builder.build(DjangoConfig, items["django"], "django") if "django" in items else None
    log = builder.build(LogConfig, items.get("log", empty), "log") or LogConfig()
    sections: dict[str, GatewaySection] = {}
    for name, cls in section_classes.items():
        section = _build_section(builder, cls, items[name], name) if name in items else None
        if section is not None:
            sections[name] = section
    _check_layer(layer, items.get("layer", empty), reader)
    if reader.problems:
        raise ConfigError(sorted(reader.problems, key=lambda p: p.line))
    return Config(Path(filename).resolve() if filename != "<string>" else Path.cwd() / filename,
                  layer, django, log, sections)


def _build_section(builder: _Builder, cls: type, node: _Node, name: str) -> GatewaySection | None:
    """A protocol section, its cross-field problems recorded at the keys they name."""
    section = builder.build(cls, node, name)
    if section is not None:
        for key, message in section_problems(section):
            line = _line_of(node, key) or node.key_line
            builder.reader.problem(line, f"{name}.{key}" if key else name, message)
    return section


def _check_layer(layer: LayerConfig, node: _Node, reader: _Reader) -> None:
    if not layer.url or not isinstance(node.value, dict) or "url" not in node.value:
        return
    parts = urlsplit(layer.url)
    if parts.scheme in ("redis", "rediss") and "," in parts.netloc:
        reader.problem(
            node.value["url"].line,
            "layer.url",
            "several Redis hosts are not supported: channels_redis shards process-specific "
            "channels inconsistently between send and receive, so replies get lost; use one "
            "Redis endpoint (or sentinel://) instead",
        )


def load_config(path: str | Path, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read and validate a configuration file; raise :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), 0, "", f"cannot read: {exc.strerror}")])
    return parse_config(text, str(path), environ=environ)


def _list_item(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    return typing.get_args(tp)[0] if typing.get_origin(tp) is list else None


def reference(cls: type, prefix: str) -> list[tuple[str, str, Any, str]]:
    """Every key of a section dataclass as ``(path, type, default, doc)`` rows.

    The configuration reference in the docs is checked against these rows; a
    list of dataclasses appears as ``prefix.key`` and its items' keys as
    ``prefix.key[].item_key``.
    """
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(reference(tp, path))
            continue
        item = _list_item(tp)
        if item is not None and dataclasses.is_dataclass(item):
            rows.append((path, "list", [], f.metadata.get("doc", "")))
            rows.extend(reference(item, f"{path}[]"))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        rows.append((path, _type_name(tp), default, f.metadata.get("doc", "")))
    return rows
