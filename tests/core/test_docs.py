"""The configuration reference in README.md and docs/ cannot go stale."""

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from gateways.core import registry
from gateways.core.config import DeadLettersConfig, DjangoConfig, LayerConfig, LogConfig, WorkerConfig, reference

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


SECTIONS = [("layer", LayerConfig), ("django", DjangoConfig), ("log", LogConfig), ("dead_letters", DeadLettersConfig),
            ("worker", WorkerConfig),
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


# --------------------------------------------------------------------------
# Names, files, links and commands the docs mention exist.

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]
DOC_IDS = [str(path.relative_to(ROOT)) for path in DOCS]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    found = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` is a module, or an attribute of the longest importable prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_relative_links_and_their_anchors_exist(doc):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert not broken, f"{doc.name}: links to nothing: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_named_modules_files_and_commands_exist(doc):
    text = doc.read_text()
    names = re.findall(r"`((?:gateways|consumers)(?:\.\w+)+)", text)
    # Django system check ids (gateways.E001) are registered by the consumers app, not importable.
    check_ids = (ROOT / "consumers" / "apps.py").read_text()
    missing = [name for name in names if not (re.fullmatch(r"gateways\.[EW]\d{3}", name) and f'"{name}"' in check_ids)
               and not resolves(name)]
    missing += [path for path in re.findall(
        r"`((?:gateways|consumers|tests|bench|config|example|protocol_specs|docs|scripts)/[\w./-]*\w)/?`", text)
        if not (ROOT / path).exists()]
    missing += [module for module in re.findall(r"python -m (bench(?:\.\w+)*)", text)
                if importlib.util.find_spec(module) is None]
    missing += [name for name in ("DESIGN.md",) if name in text]
    assert not missing, f"{doc.name} names what does not exist: {missing}"


def test_every_guide_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    unlinked = [doc.name for doc in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{doc.name}" not in readme]
    assert not unlinked and "](bench/RESULTS.md)" in readme, unlinked


GUIDES = [doc for doc in DOCS if doc.parent != ROOT / "bench"]


@pytest.mark.parametrize("doc", GUIDES, ids=[str(d.relative_to(ROOT)) for d in DOCS if d.parent != ROOT / "bench"])
def test_readme_and_guides_hold_no_benchmark_figures(doc):
    """Measurements live in bench/RESULTS.md; guides and the README link there."""
    text = doc.read_text()
    assert "msgs/s" not in text and "ev/s" not in text, f"{doc.name} holds benchmark figures"
