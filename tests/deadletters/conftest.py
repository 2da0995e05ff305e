"""Dead-letter tests: the fault suite's AOF Redis, and configs naming a Redis."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "faults") not in sys.path:
    sys.path.append(str(TESTS / "faults"))
