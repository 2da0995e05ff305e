"""The complete examples of docs/testing.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
BLOCKS = [block for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
          if re.search(r"^async def test_", block, re.M)]


def test_the_guide_has_runnable_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[re.search(r"^async def (test_\w+)", b, re.M)[1] for b in BLOCKS])
async def test_guide_example(block):
    namespace: dict = {"pytest": pytest}
    exec(compile(block, str(GUIDE), "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        await test()
