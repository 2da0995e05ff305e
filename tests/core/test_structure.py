"""The package's import structure, read from the source (AST), not by importing it.

- No import circle among the modules of ``gateways/``, ``consumers/`` and
  ``protocol_specs/``. Imports inside functions count too: an import moved
  into a function to dodge a circle still ties the two modules together.
  The one exception is an import marked ``# lazy: optional extra`` on its
  line, for a module that may not be installed.
- ``consumers/`` (the Django side) depends on the core and the specs only,
  never on a protocol's gateway package; ``protocol_specs/`` depends on
  neither gateways nor consumers.
- ``gateway worker`` finds each protocol's channels and conversations
  without the protocol's extra installed.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateways", "consumers", "protocol_specs")
#: The gateway packages consumers must not import (they may import gateways.core).
GATEWAY_PACKAGES = ("gateways.email", "gateways.mqtt", "gateways.slack", "gateways.websocket")
LAZY_MARK = "# lazy: optional extra"

Graph = dict[str, dict[str, int]]  # module -> {imported module: line}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names ``node`` imports (``from a import b`` gives ``a.b`` and ``a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolve against the importing module's package
        package = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join([*package, *([base] if base else [])])
    return [name for alias in node.names for name in (f"{base}.{alias.name}", base)]


def import_graph(modules: dict[str, Path]) -> Graph:
    """Which module of ``modules`` imports which, at any depth of the file, except lazy-marked lines."""
    graph: Graph = {}
    for module, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(source, str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if LAZY_MARK in lines[node.lineno - 1]:
                continue
            for name in _imported(module, path.name == "__init__.py", node):
                while name and name not in modules:  # an imported name, not a module: its module
                    name = name.rpartition(".")[0]
                if name and name != module:
                    edges.setdefault(name, node.lineno)
        graph[module] = edges
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The import circles: strongly connected groups of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(graph: Graph, group: list[str]) -> str:
    """One circle as its import lines, e.g. ``a:12 -> b``."""
    members = set(group)
    return "; ".join(f"{m}:{line} -> {t}" for m in group for t, line in graph[m].items() if t in members)


def test_cycle_finder_sees_a_circle_through_a_function_level_import(tmp_path: Path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    (tmp_path / "c.py").write_text("def f():\n    import a  # lazy: optional extra\n")
    graph = import_graph({"a": tmp_path / "a.py", "b": tmp_path / "b.py", "c": tmp_path / "c.py"})
    assert cycles(graph) == [["a", "b"]]
    assert graph["c"] == {}


def test_no_import_cycle_in_gateways():
    graph = import_graph(module_files())
    found = [group for group in cycles(graph) if any(m.startswith("gateways.") for m in group)]
    assert not found, "import circles:\n" + "\n".join(describe(graph, group) for group in found)


def test_no_import_cycle_in_consumers():
    graph = import_graph(module_files())
    found = [group for group in cycles(graph) if not any(m.startswith("gateways.") for m in group)]
    assert not found, "import circles:\n" + "\n".join(describe(graph, group) for group in found)


def test_consumers_import_no_gateway_package():
    graph = import_graph(module_files())
    found = [f"{module}:{line} -> {target}"
             for module, edges in graph.items() if module.split(".")[0] == "consumers"
             for target, line in edges.items()
             if any(target == p or target.startswith(p + ".") for p in GATEWAY_PACKAGES)]
    assert not found, "consumers import gateway packages:\n" + "\n".join(found)


def test_protocol_specs_import_nothing_from_gateways():
    """The specs are what gateways and consumers share: they depend on neither."""
    graph = import_graph(module_files())
    found = [f"{module}:{line} -> {target}"
             for module, edges in graph.items() if module.split(".")[0] == "protocol_specs"
             for target, line in edges.items() if target.split(".")[0] in ("gateways", "consumers")]
    assert not found, "protocol_specs imports gateways or consumers:\n" + "\n".join(found)


#: Run in a fresh interpreter where the protocol extras cannot be imported.
WORKER_WITHOUT_EXTRAS = '''
import importlib.abc, json, sys

BLOCKED = ("aiosmtpd", "aiomqtt", "paho", "slack_sdk")
attempts = []

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"blocked: {name}", name=name)
        return None

sys.meta_path.insert(0, Block())

from gateways.core.config import parse_config
from gateways.core.worker import conversation_key, worker_channels

config = parse_config(sys.stdin.read(), environ={})
key = conversation_key(None)
messages = [
    {"type": "email.receive", "reply_channel": "email.ack!x", "id": "1"},
    {"type": "mqtt.publish", "topic": "a/1", "reply_channel": "mqtt.send"},
    {"type": "mqtt.undecodable", "topic": "a/2", "reply_channel": "mqtt.send"},
    {"type": "mqtt.result", "id": "2"},
    {"type": "slack.message", "team": "T1", "channel": "C1", "reply_channel": "slack.send"},
    {"type": "slack.event", "team": "T1", "reply_channel": "slack.send"},
    {"type": "websocket.receive", "reply_channel": "specific.p!c1"},
]
print(json.dumps({"sections": sorted(config.sections), "channels": worker_channels(config),
                  "keys": [key(m) for m in messages], "attempts": attempts,
                  "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)}))
'''

ALL_FOUR = """
django:
  settings: x.settings
  channels: [extra.one]
email:
  listen: 127.0.0.1:2525
  domains: [example.com]
  relay: console://
  routes:
    - channel: mail.support
      address: support@.*
mqtt:
  broker: mqtt://127.0.0.1:1883
  subscriptions:
    - filter: a/#
      channel: mqtt.a
slack:
  routes:
    - channel: slack.deploys
      commands: [/deploy]
websocket:
  routes:
    - path: ^/chat/$
      channel: websocket.chat
"""


@pytest.mark.integration
def test_worker_finds_channels_and_conversations_without_the_protocol_extras():
    """`gateway worker` runs only Django consumers: what it needs of each protocol
    (the channels to consume, the conversation of a message) comes from the
    specs, not from the gateways that import aiosmtpd, aiomqtt and slack_sdk."""
    result = subprocess.run([sys.executable, "-c", WORKER_WITHOUT_EXTRAS], input=ALL_FOUR, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["sections"] == ["email", "mqtt", "slack", "websocket"]
    assert found["channels"] == ["extra.one", "mail.support", "email.receive", "mqtt.a", "slack.deploys",
                                 "slack.receive", "websocket.chat"]
    assert found["keys"] == [None, "a/1", "a/2", None, ["T1", "C1"], None, "specific.p!c1"]
    assert found["attempts"] == [] and found["loaded"] == []


def test_routing_finds_the_spec_modules_and_leaves_others_to_their_gateway():
    import protocol_specs

    for protocol in ("email", "mqtt", "slack", "websocket"):
        module = protocol_specs.routing(protocol)
        assert module is not None and module.__name__ == f"protocol_specs.{protocol}"
    # A plug-in protocol has no module here: the worker asks its gateway class instead.
    assert protocol_specs.routing("irc") is None
    assert protocol_specs.routing("../email") is None
