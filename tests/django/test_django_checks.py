"""`manage.py check` validates the gateway YAML exactly as `gateway check` does."""

from __future__ import annotations

import subprocess

import pytest

from servers import PYTHON, REPO

# Each test runs `manage.py check` or `gateway check` in a process of its own.
pytestmark = pytest.mark.integration

BROKEN = """\
layer:
  url: redis://127.0.0.1:6379/0
  capacity: -3
email:
  listen: nope
  domains: [Demo.Local]
websocket:
  listen: 127.0.0.1:8765
  routes: {}
"""


def _run(argv: list[str], cwd, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "example"), **env})


def _manage_check(tmp_path, config: str | None, settings: str = "demo.settings") -> subprocess.CompletedProcess:
    env = {"DJANGO_SETTINGS_MODULE": settings, "DEMO_DATABASE": str(tmp_path / "db.sqlite3"),
           "PYTHONPATH": f"{tmp_path}:{REPO / 'example'}"}
    if config is not None:
        env["GATEWAY_CONFIG"] = config
    return _run([PYTHON, str(REPO / "example" / "manage.py"), "check"], tmp_path, **env)


def test_a_broken_yaml_fails_manage_py_check_with_the_gateway_check_lines(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(BROKEN)
    gateway = _run([PYTHON, "-m", "gateways", "check", "--config", str(path)], REPO)
    assert gateway.returncode == 2
    expected = gateway.stderr.splitlines()
    assert len(expected) >= 4 and all(line.startswith(f"{path}:") for line in expected), expected

    django = _manage_check(tmp_path, str(path))
    assert django.returncode != 0, django.stdout + django.stderr
    printed = [line for line in django.stderr.splitlines() if line.startswith(f"{path}:")]
    # Django prints its messages sorted; the lines themselves are the same.
    assert sorted(printed) == sorted(expected), django.stderr


def test_a_valid_yaml_passes(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("layer:\n  url: redis://127.0.0.1:6379/0\n")
    django = _manage_check(tmp_path, str(path))
    assert django.returncode == 0, django.stderr
    assert "no issues" in django.stdout


def test_without_the_setting_a_warning_says_what_to_set(tmp_path):
    (tmp_path / "nogateway.py").write_text("from demo.settings import *  # noqa\n"
                                          "del GATEWAY_CONFIG\n"
                                          "CHANNEL_LAYERS = {}\n")
    django = _manage_check(tmp_path, None, settings="nogateway")
    assert django.returncode == 0, django.stderr  # a warning, not an error
    assert "(gateways.W001) GATEWAY_CONFIG is not set" in django.stderr
    assert "HINT: set GATEWAY_CONFIG in the settings to the gateway YAML file" in django.stderr
