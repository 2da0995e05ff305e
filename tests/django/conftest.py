"""The Django-side tests use the protocol test stacks: their helper modules go on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for stack in ("email", "mqtt"):  # email_stack.py, mqtt_stack.py
    if str(TESTS / stack) not in sys.path:
        sys.path.insert(0, str(TESTS / stack))
