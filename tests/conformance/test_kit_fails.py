"""The kit fails a gateway that breaks its spec: a line gateway whose
``line.receive`` carries a key the schema does not allow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from servers import REPO

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "examples" / "line_gateway"


def test_an_invalid_emitted_message_fails_the_kit(tmp_path):
    # Registered as `line` by a distribution of its own; the example's source
    # on the path gives it the package to subclass and the spec module.
    (tmp_path / "broken_line.py").write_text(textwrap.dedent("""
        from line_gateway import protocol
        from line_gateway.daemon import LineGateway

        valid_receive_message = protocol.receive_message


        def receive_message(text, reply_channel):
            return {**valid_receive_message(text, reply_channel), "extra": "not in the spec"}


        protocol.receive_message = receive_message


        class BrokenLineGateway(LineGateway):
            pass
    """))
    dist = tmp_path / "broken_line-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-line\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[gateways.protocols]\nline = broken_line:BrokenLineGateway\n\n[gateways.specs]\nline = line_gateway.spec\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(EXAMPLE)])}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-c", str(EXAMPLE / "pyproject.toml"), str(EXAMPLE / "tests" / "test_conformance.py"),
                             "-k", "emitted_messages_are_valid"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the gateway emitted an invalid message" in result.stdout and "extra" in result.stdout, result.stdout
