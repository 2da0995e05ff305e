"""The configuration reference in README.md and docs/ cannot go stale."""

from pathlib import Path

import pytest

from gateways.core import registry
from gateways.core.config import DjangoConfig, LayerConfig, LogConfig, reference

ROOT = Path(__file__).resolve().parents[2]


def documented_keys() -> set[str]:
    text = (ROOT / "README.md").read_text()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text += doc.read_text()
    keys = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            keys.add(line.split("`")[1])
    return keys


SECTIONS = [("layer", LayerConfig), ("django", DjangoConfig), ("log", LogConfig),
            *registry.section_classes().items()]


@pytest.mark.parametrize("name,cls", SECTIONS, ids=[name for name, _ in SECTIONS])
def test_every_config_key_is_documented(name, cls):
    documented = documented_keys()
    missing = [path for path, *_ in reference(cls, name) if path not in documented]
    assert not missing, f"not in README.md or docs/*.md reference tables: {missing}"


def test_no_documented_key_is_unknown():
    known = {path for name, cls in SECTIONS for path, *_ in reference(cls, name)}
    stale = sorted(k for k in documented_keys()
                   if "." in k and k.split(".")[0] in {n for n, _ in SECTIONS} and k not in known)
    assert not stale, f"documented but not accepted by the code: {stale}"


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("## ", 1)[0]
    assert "./scripts/demo" in head and "./scripts/test" in head
    assert (ROOT / "scripts" / "demo").exists() and (ROOT / "scripts" / "test").exists()
