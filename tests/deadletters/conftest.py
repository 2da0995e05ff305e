"""Dead-letter tests: the fault suite's AOF Redis and the protocol packages' stacks."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for package in ("faults", "email", "mqtt"):
    if str(TESTS / package) not in sys.path:
        sys.path.append(str(TESTS / package))
